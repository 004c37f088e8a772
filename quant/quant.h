/*
 * quant.h - the public interface of quant/: model I/O and the math.
 *
 * Safetensors reader (mmap, bounds-checked) and planner/writer, model
 * directories (config.json, single or sharded safetensors, fingerprint),
 * the variant-name grammar, the quantizers and their packers, and the
 * description of a variant's output tensors.
 *
 * No FUSE and no LMDB here: fs/ and cache/ build on this.
 */
#ifndef QF_QUANT_H
#define QF_QUANT_H

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
 * file was truncated in place) and got zeros: what was read is not the
 * file's.  Logged once.  Readers of the map call it after reading.
 */
bool qf_st_faulted(const struct qf_st_file *f);
void qf_st_close(struct qf_st_file *f);
/* Pointer to t's bytes inside the map (borrowed, valid until close). */
const void *qf_st_data(const struct qf_st_file *f,
		       const struct qf_st_tensor *t);
/* True when the file on disk still has the size and mtime seen at open. */
bool qf_st_unchanged(const struct qf_st_file *f);

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
/* variant names (DESIGN.md section 2; man quantfs-variants(7))        */

enum qf_method {
	QF_METHOD_RTN,
	QF_METHOD_GPTQ,
	QF_METHOD_AWQ,
	QF_METHOD_BRECQ,
	QF_METHOD_MIXED_STATIC,
	QF_METHOD_MIXED_DYN,
	QF_METHOD_MIXED_BUDGET,
	QF_METHOD_KQUANT,
};

enum {
	QF_SPEC_ACT = 1u << 0,		/* gptq: act-order (desc_act) */
	QF_SPEC_STATIC = 1u << 1,	/* gptq: static groups (needs act) */
	QF_SPEC_SYM = 1u << 2,		/* symmetric grid */
	QF_SPEC_REFLIP = 1u << 3,	/* awq: GQA ReFlip refinement */
	QF_SPEC_FAKE = 1u << 4,		/* dequantized, source dtype */
	QF_SPEC_L2 = 1u << 5,		/* awq: salience sqrt(mean x^2) */
};

#define QF_SPEC_CALIB_MAX 64

struct qf_spec {
	enum qf_method method;
	int bits;		/* weight bits; MLP bits for brecq; kquant bits */
	int group;		/* 32/64/128, -1 = per channel, 0 = n/a */
	int attn_bits;		/* brecq: attention bits; 0 = n/a */
	int head_bits;		/* brecq: lm_head bits, 16 = fp16 (default) */
	int avg_bits_x100;	/* mixed_b: average bits x 100 */
	char kq_size;		/* kquant: 'S', 'M', 'L' or 0 */
	unsigned flags;		/* QF_SPEC_* */
	char calib[QF_SPEC_CALIB_MAX + 1]; /* "" = default set */
};

/*
 * Parse a variant name.  Only canonical spellings parse, so
 * print(parse(s)) == s for every accepted s.  Pure function.
 * Returns 0 or QF_ESPEC with *why (if given) naming the problem.
 */
int qf_spec_parse(const char *name, struct qf_spec *out, const char **why);
/* Canonical name into out.  Returns its length, or -ENOSPC. */
int qf_spec_print(const struct qf_spec *s, char *out, size_t cap);
/* A k-quant mix this build produces (kq4_k_m, kq6_k). */
bool qf_spec_kq_supported(const struct qf_spec *s);
/* Method needs calibration data (gptq, awq, brecq, mixed_dyn/budget). */
bool qf_spec_is_calibrated(const struct qf_spec *s);
const char *qf_method_name(enum qf_method m);

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
	uint8_t fp[32];			/* source fingerprint */
	char fp_hex[65];
};

/*
 * Open a Hugging Face model directory: config.json (an object, at most
 * 4 MiB) and model.safetensors or the shards that
 * model.safetensors.index.json names (each validated; a tensor named by
 * the index must be in its shard; no tensor in two shards).
 * The fingerprint is SHA-256 over the config.json bytes and, per shard in
 * name order, its name, size, mtime (ns) and the SHA-256 of its header:
 * changing any weight byte through the filesystem changes the mtime, and
 * a mount never hashes gigabytes of weights.
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
/* RTN and the GPTQ checkpoint packing                                */

/*
 * Quantization grid of one output row, GPTQ conventions: asymmetric uses
 * [min(w,0), max(w,0)] with zero = round(-min/scale); symmetric uses
 * zero = 2^(bits-1) and scale = 2 max|w| / maxq.  Scales are rounded to
 * fp16 (what the checkpoint stores) before rounding weights, so the served
 * values dequantize exactly to scale * (q - zero).  Asymmetric zeros are
 * kept >= 1 because the "gptq" (v1) checkpoint stores zero - 1.
 */
struct qf_qparams {
	int bits;			/* 2, 3, 4, 8 */
	int group;			/* columns per group; >= in = one group */
	bool sym;
};

/* Groups of a row of in columns. */
static inline int64_t qf_ngroups(int64_t in, int group)
{
	return group <= 0 || group >= in ? 1 : (in + group - 1) / group;
}

/*
 * Round-to-nearest quantization of w (rows x in, row-major: the nn.Linear
 * [out, in] layout) into q (rows x in), scale/zero (rows x ngroups).
 * Returns 0 or QF_ENUMERIC (a scale does not fit fp16).
 */
int qf_rtn_quantize(const float *w, int64_t rows, int64_t in,
		    const struct qf_qparams *p, uint8_t *q, uint16_t *scale_f16,
		    int32_t *zero);
/*
 * The grid of one group whose weights span [lo, hi]: fp16 scale (and its
 * f32 value) and zero, by the rules above.  Returns 0 or QF_ENUMERIC.
 */
int qf_rtn_grid(float lo, float hi, const struct qf_qparams *p,
		uint16_t *sc16, float *sc, int32_t *zero);
/* Scalar reference of the same, written plainly; for tests. */
int qf_rtn_quantize_ref(const float *w, int64_t rows, int64_t in,
			const struct qf_qparams *p, uint8_t *q,
			uint16_t *scale_f16, int32_t *zero);

/*
 * The compute backend (backend.c): "cpu" (OpenBLAS/LAPACK) or "cuda"
 * (cuBLAS/cuSOLVER and kernels in a module loaded at run time).  One
 * choice per process: qf_backend_select("cpu" | "cuda" | "auto") returns
 * the backend in use; "cuda" and "auto" fall back to the CPU, with the
 * reason in why, when the module or a device does not work.  QF_ESPEC
 * for another name.  On cuda, products above 2^27 flops, X^T X and
 * GPTQ's core run on the device; results differ from the CPU's only by
 * the order of floating-point sums (see quantfs-variants(7), BACKENDS).
 */
enum qf_backend { QF_BACKEND_CPU, QF_BACKEND_CUDA };
int qf_backend_select(const char *want, char *why, size_t cap);
enum qf_backend qf_backend_current(void);
const char *qf_backend_name(enum qf_backend b);
/* True when this build has the CUDA module. */
bool qf_backend_cuda_built(void);
/* "OpenBLAS" or the device's name and size. */
void qf_backend_describe(char *out, size_t cap);
/* Row-major C[m, n] = alpha op(A) op(B) + beta C (cblas_sgemm's terms). */
void qf_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
	      float alpha, const float *a, int64_t lda, const float *b,
	      int64_t ldb, float beta, float *c, int64_t ldc);
/* Row-major upper triangle of C[n, n] += X^T X for X [k, n]. */
void qf_ssyrk_t(int64_t n, int64_t k, const float *x, int64_t ldx, float *c);

/*
 * GPTQ (Frantar et al. 2022) of one linear, as published: Cholesky of the
 * damped inverse Hessian, columns quantized in order (or by descending
 * diag(H) with act_order) with error feedback, lazy blocks of
 * `blocksize` columns and a GEMM update of the rest; group grids
 * computed as the loop reaches each group (or up front with
 * static_groups).  w [out, in] is replaced by the dequantized result; h
 * [in, in] (X^T X, any positive scale) is destroyed.  Outputs in the
 * original column order: q [out, in], scale/zero [out, ngroups], g_idx
 * [in].  *loss: sum over columns of (w - q)^2 / Hinv_jj^2 / 2 (the
 * paper's objective).  Returns 0, QF_ENUMERIC (H not positive definite
 * even after 5 retries with 10x the damping), -ENOMEM.
 */
struct qf_gptq_times {		/* accumulated seconds, for benches */
	double chol;			/* damping, Cholesky, inverse */
	double columns;			/* the column loop inside blocks */
	double lazy;			/* the blocked GEMM updates */
	double lazy_flop;		/* their floating-point operations */
};

struct qf_gptq_opts {
	struct qf_qparams qp;
	bool act_order;
	bool static_groups;
	float damp;			/* fraction of mean diag(H), 0.01 */
	int blocksize;			/* 128 */
	struct qf_gptq_times *times;	/* optional: phase timings */
	/* tests: the column loop by the CUDA kernel's code run on the host
	 * (needs the CUDA module, no device; QF_EUNSUPPORTED without) */
	bool kernel_on_host;
};
int qf_gptq_quantize(float *w, int64_t out, int64_t in, float *h,
		     const struct qf_gptq_opts *o, uint8_t *q,
		     uint16_t *scale_f16, int32_t *zero, int32_t *g_idx,
		     double *loss);

/* True when bits packs [in, out] into GPTQ qweight/qzeros words. */
bool qf_gptq_packable(int bits, int64_t in, int64_t out);
/*
 * qweight (in * bits / 32, out) from q (out x in); qzeros (ngroups,
 * out * bits / 32) from zero (out x ngroups), storing zero - 1 (v1).
 */
void qf_gptq_pack_qweight(const uint8_t *q, int64_t out, int64_t in,
			  int bits, uint32_t *qweight);
void qf_gptq_pack_qzeros(const int32_t *zero, int64_t out, int64_t ngroups,
			 int bits, uint32_t *qzeros);
/* Inverse of the above (tests, and _fake re-use). */
void qf_gptq_unpack_qweight(const uint32_t *qweight, int64_t out, int64_t in,
			    int bits, uint8_t *q);

/* ------------------------------------------------------------------ */
/* AWQ (Lin et al. 2023) with heuristic rounding and GQA ReFlip       */

/*
 * The AWQ grid of a group whose weights span [lo, hi] (their real
 * minimum and maximum; zero is not forced into the range):
 * scale = (hi - lo) / maxq rounded to fp16 (at least 1e-5), zero =
 * clamp(round(-lo / scale), 0, maxq); w ~ scale * (q - zero).
 * Returns 0 or QF_ENUMERIC (a scale does not fit fp16).
 */
int qf_awq_grid(float lo, float hi, int bits, uint16_t *sc16, float *sc,
		int32_t *zero);

struct qf_awq_opts {
	int bits;			/* 2..8 */
	int group;			/* columns per group; >= in = one */
	int n_grid;			/* alpha grid points, 20 */
	int clip_grid;			/* clip ratios tried, 20 */
	float max_shrink;		/* smallest clip ratio 1 - max_shrink, 0.5 */
	bool flip;			/* heuristic rounding correction */
};
void qf_awq_defaults(struct qf_awq_opts *o, int bits, int group);

/*
 * Round-to-nearest of w [out, in] with the AWQ grid per (row, group):
 * q [out, in], scale/zero [out, ngroups].  Returns 0 or QF_ENUMERIC.
 */
int qf_awq_rtn(const float *w, int64_t out, int64_t in,
	       const struct qf_awq_opts *o, uint8_t *q, uint16_t *sc16,
	       int32_t *zero);

/*
 * Output error energy of replacing w by w': sum over rows of
 * d H d^T, d = w - w' (H = X^T X [in, in], full symmetric).
 */
double qf_awq_energy(const float *w, const float *w2, int64_t out,
		     int64_t in, const float *h);

/*
 * Scale search for n linears that share one input x (q/k/v after
 * input_layernorm, gate/up after post_attention_layernorm, o after v,
 * down after up).  For alpha = i / n_grid, i = 0 .. n_grid - 1:
 * s = max(sal, 1e-4)^alpha normalised by sqrt(max(s) * min(s)); the error
 * is sum_k qf_awq_energy(W_k, RTN(W_k diag(s)) diag(s)^-1) with the
 * group RTN of qf_awq_rtn (no clipping).  Ties keep the smaller alpha.
 * w[k] is [out[k], in]; sal [in] the activation salience (mean |x|, or
 * the root mean square with the L2 option); h [in, in] = X^T X.
 * s [in] receives the best scales; *alpha, *err_best and *err_plain
 * (alpha = 0, i.e. plain RTN) when non-NULL.
 * Returns 0, QF_ENUMERIC, -ENOMEM.
 */
int qf_awq_search_scale(const float *const *w, const int64_t *out, int n,
			int64_t in, const float *sal, const float *h,
			const struct qf_awq_opts *o, float *s, double *alpha,
			double *err_best, double *err_plain);

/*
 * Clip search of one (already scaled) linear: for every row and group,
 * the max |w| is shrunk by ratios 1 - i / clip_grid * max_shrink
 * (i = 0 .. clip_grid - 1, i.e. ratio 1 first), the group clamped to
 * [-r max, r max] and quantized with qf_awq_grid of its clamped
 * min/max; the ratio with the least error d H_gg d^T (H_gg the group's
 * diagonal block of h) wins (ties: the larger ratio).  w is clamped in
 * place.  Returns 0, QF_ENUMERIC, -ENOMEM.
 */
int qf_awq_search_clip(float *w, int64_t out, int64_t in, const float *h,
		       const struct qf_awq_opts *o);

/*
 * Heuristic rounding correction of q (from qf_awq_rtn of w): per row,
 * flip the rounding of the weight whose flip (to the other neighbour of
 * w / scale + zero on the grid, within [0, maxq], each weight at most
 * once) lowers d H d^T the most; repeat while some flip lowers it.  Never
 * increases the error.  *err_before / *err_after (energies, summed over
 * rows) and *nflips when non-NULL.  Returns 0, -ENOMEM.
 */
int qf_awq_flip(const float *w, int64_t out, int64_t in, const float *h,
		const struct qf_awq_opts *o, uint8_t *q, const uint16_t *sc16,
		const int32_t *zero, double *err_before, double *err_after,
		int64_t *nflips);

/*
 * GQA ReFlip: refine the rounding of q_proj and k_proj against the
 * attention scores S_h = (X Wq_h^T)(X Wk_g(h)^T)^T of every query head h
 * with its key head g(h) = h / (heads / kv_heads), over all pairs of the
 * n sample tokens x [n, in] (pre-RoPE scores).  First q_proj per query
 * head against the quantized keys, then k_proj per key head against its
 * query heads' refined queries: greedily flip the single weight whose
 * flip lowers sum_h ||S'_h - S_h||^2 the most, while it drops, at most
 * max_flip_pct * in flips per row (head dimension) and only in the
 * critical_dim_pct input channels of moderate salience (ranked by sal,
 * the band centred on the median).  wq [heads * head_dim, in] and
 * wk [kv_heads * head_dim, in] are the fp weights q/qk were rounded
 * from; sc/zero as qf_awq_rtn.  *err_before / *err_after: relative
 * score error sum ||S' - S||^2 / sum ||S||^2.
 */
#define QF_REFLIP_SAMPLE 512		/* calibration tokens ReFlip scores */
struct qf_reflip_opts {
	int heads;
	int kv_heads;
	int head_dim;
	float max_flip_pct;		/* 0.05 */
	float critical_dim_pct;		/* 0.15 */
};
int qf_awq_reflip(const float *wq, const float *wk, int64_t in,
		  const float *x, int64_t n, const float *sal,
		  const struct qf_awq_opts *o, const struct qf_reflip_opts *r,
		  uint8_t *qq, const uint16_t *scq, const int32_t *zq,
		  uint8_t *qk, const uint16_t *sck, const int32_t *zk,
		  double *err_before, double *err_after, int64_t *nflips);
/* Relative score error of the dequantized q/k (for tests and reports). */
double qf_awq_score_error(const float *wq, const float *wk,
			  const float *wq2, const float *wk2, int64_t in,
			  const float *x, int64_t n,
			  const struct qf_reflip_opts *r);

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
/* variants: the output tensors of (model, spec) and their production  */

#define QF_VT_PASSTHROUGH UINT32_MAX

struct qf_vtensor {
	char *name;			/* output tensor name */
	enum qf_dtype dtype;
	int ndim;
	int64_t shape[2];
	uint32_t group;			/* producing group, or PASSTHROUGH */
	const struct qf_model_tensor *src; /* passthrough source */
};

struct qf_vgroup {
	const struct qf_model_tensor *w; /* source linear weight */
	uint32_t first;			/* its output tensors: first.. */
	uint32_t n;			/*  ..first + n - 1 in v->t */
	struct qf_qparams qp;		/* the grid (bits 6: a 6-bit grid) */
	int pack_bits;			/* the container: 2, 3, 4 or 8 */
	uint64_t src_bytes;		/* source bytes consumed */
	/*
	 * AWQ: the norm whose weights absorb this linear's input scales
	 * (input_layernorm for q_proj, post_attention_layernorm for
	 * gate_proj); it is the group's last output tensor.  NULL: none.
	 */
	const struct qf_model_tensor *norm;
};

/* Grid bits of linear `name`, 16 = not quantized (see below). */
typedef int (*qf_bits_fn)(void *arg, const char *name);

struct qf_variant {
	struct qf_model *m;		/* borrowed */
	struct qf_spec spec;
	char name[128];			/* canonical spelling */
	struct qf_vtensor *t;		/* output tensors, any order */
	size_t nt;
	struct qf_vgroup *g;		/* production units */
	size_t ng;
	struct qf_buf skipped;		/* JSON array text of kept layers */
	size_t nskipped;
	qf_bits_fn bits_of;		/* per-linear bits, or NULL */
	void *bits_arg;
	/* mixed_dyn / mixed_b: the "allocation" object of
	 * quantization.json (JSON text, borrowed) */
	const char *alloc_json;
};

/*
 * Describe the variant: output tensors with exact shapes, production
 * groups.  Nothing is quantized.  Returns 0, QF_EUNSUPPORTED (method not
 * in this build), -ENOMEM.  Free with qf_variant_free().
 */
int qf_variant_init(struct qf_model *m, const struct qf_spec *spec,
		    struct qf_variant **out);
/*
 * Per-linear precision: the grid bits of linear `name` (a ".weight"
 * tensor), 16 to keep it in the source dtype.  The default rule: the
 * spec's bits; brecq: attention (self_attn.*) at attn_bits, the rest at
 * bits; mixed_static: mixed.h's default role table.  mixed_dyn and mixed_b
 * need bits_of (their allocation is measured).  Grids without a GPTQ
 * packing (5, 6, 7 bits) are stored in the 8-bit container with values
 * on the narrower grid.
 */
int qf_variant_init_bits(struct qf_model *m, const struct qf_spec *spec,
			 qf_bits_fn bits_of, void *arg,
			 struct qf_variant **out);
/* The container of a grid: 2, 3, 4, 8 as they are; 5..7 in 8. */
int qf_pack_bits(int bits);
void qf_variant_free(struct qf_variant *v);
/*
 * Produce group gi: out[k] receives the bytes of tensor v->t[first + k]
 * (caller allocates numel * dtype size each).  *err_rel (if given) gets
 * the relative squared weight error sum((w - deq)^2) / sum(w^2).
 * Returns 0, QF_ECORRUPT, QF_ENUMERIC, -ENOMEM.
 */
int qf_variant_produce(const struct qf_variant *v, size_t gi, void **out,
		       double *err_rel);
/*
 * Write group gi's output tensors (packed GPTQ tensors, or the
 * dequantized weight for _fake) from integer results: q [out, in],
 * scale/zero [out, ngroups], g_idx [in] (group of each input column).
 */
void qf_variant_emit(const struct qf_variant *v, size_t gi, const uint8_t *q,
		     const uint16_t *sc, const int32_t *zero,
		     const int32_t *g_idx, void **out);
uint64_t qf_vtensor_bytes(const struct qf_vtensor *t);
/* config.json: the source's plus "quantization_config". */
int qf_variant_config(const struct qf_variant *v, struct qf_buf *out);
/*
 * What a calibrated variant records in quantization.json.  Numbers that
 * are known only after production print with a fixed width, so the file
 * has its final size before it: render with loss == NULL for the
 * placeholder, with the results once the job is done.
 */
struct qf_calib_info {
	char source[256];		/* how the set was made */
	char key[65];			/* hex id of the set (in the cache key) */
	char hash[65];			/* sha256 of token ids + shape */
	int nseq;
	int seqlen;
	double damp;			/* GPTQ damp_percent */
	double seconds;			/* production time */
	const double *loss;		/* [ng] or NULL: relative output error */
	const double *loss_rtn;		/* [ng] or NULL: RTN at same settings */
	/* awq: alpha of each linear's scale search, [ng] or NULL */
	const double *alpha;
	/* awq reflip: relative attention-score error before / after,
	 * [ng * 2] (set for q_proj groups) or NULL */
	const double *score;
	/* compute backend that produced it ("cpu", "cuda"), NULL: cpu */
	const char *backend;
	int brecq_iters, brecq_batch;	/* brecq: Adam steps, sequences */
};
/* quantization.json: method, parameters, hashes, per-layer layout;
 * ci is NULL for uncalibrated methods. */
int qf_variant_manifest(const struct qf_variant *v,
			const struct qf_calib_info *ci, struct qf_buf *out);

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
};
void qf_mkmodel_defaults(struct qf_mkmodel_opts *o);
/*
 * Write config.json, generation_config.json, tokenizer.json (byte-level
 * BPE), tokenizer_config.json and model.safetensors into dir (created if
 * needed), deterministically from o->seed.  Returns 0, -errno, -EINVAL.
 */
int qf_mkmodel_write(const char *dir, const struct qf_mkmodel_opts *o);

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

/* ------------------------------------------------------------------ */
/* forward pass: Llama family (llama, mistral, qwen2, qwen3) in fp32     */

struct qf_tf_config {
	char model_type[32];		/* "llama", "mistral", "qwen2", "qwen3" */
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
	bool tie;			/* tie_word_embeddings */
	bool attn_bias;			/* q/k/v biases (qwen2) */
	bool qk_norm;			/* per-head q/k RMSNorm (qwen3) */
	int sliding_window;		/* mistral: window, 0 = none */
};

/* From config.json; QF_EUNSUPPORTED for other model types. */
int qf_tf_config_parse(const struct qf_model *m, struct qf_tf_config *c);

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

/* One decoder layer's weights in fp32 (converted from the source). */
struct qf_tf_layer {
	float *w[QF_TF_NLINEAR];	/* [out, in] row-major, as nn.Linear */
	float *b[QF_TF_NLINEAR];	/* bias [out] or NULL */
	float *in_norm;			/* input_layernorm [hidden] */
	float *post_norm;		/* post_attention_layernorm [hidden] */
	float *q_norm;			/* qwen3 [head_dim] or NULL */
	float *k_norm;			/* qwen3 [head_dim] or NULL */
};

/* Load layer l (weights converted to fp32); free with _free. */
int qf_tf_layer_load(const struct qf_model *m, const struct qf_tf_config *c,
		     int l, struct qf_tf_layer *out);
void qf_tf_layer_free(struct qf_tf_layer *ly);

/*
 * Called before each linear with its input activations x [ntok, in]
 * (ntok = nseq * seqlen rows); lets calibration accumulate X^T X or
 * channel statistics.  Return non-zero to abort the forward pass.
 */
typedef int (*qf_tf_hook)(void *arg, int layer, enum qf_tf_linear lin,
			  const float *x, int64_t ntok, int64_t in);

/*
 * x [nseq * seqlen, hidden] in place: one decoder layer (RMSNorm,
 * RoPE attention with GQA and a causal mask, SwiGLU MLP, residuals) for
 * nseq independent sequences of seqlen tokens at positions 0..seqlen-1.
 * Matrix products on OpenBLAS SGEMM.  hook may be NULL.
 * Returns 0, -ENOMEM, or the hook's value.
 */
int qf_tf_layer_forward(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, int layer, float *x,
			int nseq, int seqlen, qf_tf_hook hook, void *arg);
/* Embedding lookup: x [n, hidden] for tokens ids[n]. */
int qf_tf_embed(const struct qf_model *m, const struct qf_tf_config *c,
		const int32_t *ids, int64_t n, float *x);
/* Final RMSNorm + lm_head (or tied embeddings): logits [n, vocab]. */
int qf_tf_head(const struct qf_model *m, const struct qf_tf_config *c,
	       const float *x, int64_t n, float *logits);
/*
 * Whole-model logits for nseq sequences of seqlen tokens, layer by layer
 * (one layer's fp32 weights in memory at a time).  logits [n, vocab].
 */
int qf_tf_logits(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *logits);

/* ------------------------------------------------------------------ */
/* calibration: token sets, their hash, the layer-by-layer driver       */

struct qf_calib {
	int32_t *ids;			/* [nseq * seqlen] */
	int nseq;
	int seqlen;
	uint8_t hash[32];		/* sha256(ids as int32 LE, nseq, seqlen) */
	char hash_hex[65];
	char source[256];		/* "text:<file>", "sampled:seed=<n>" */
};

/*
 * nseq windows of seqlen tokens from text tokenized with the model's own
 * tokenizer (no special tokens; BOS first in each window when the
 * tokenizer has one), spread evenly over the text.  Returns 0, -EINVAL
 * (text too short: fewer than nseq * (seqlen - 1) tokens), -ENOMEM.
 */
int qf_calib_from_text(const struct qf_tok *tok, const char *text, size_t len,
		       int nseq, int seqlen, struct qf_calib *out);
/*
 * Data-free: nseq sequences of seqlen tokens sampled from the model itself
 * (temperature 1, from BOS, a fixed seed), decoded with a KV cache.
 */
int qf_calib_sample(const struct qf_model *m, const struct qf_tf_config *c,
		    int32_t bos, int nseq, int seqlen, uint64_t seed,
		    struct qf_calib *out);
/* Fill hash/hash_hex from ids, nseq, seqlen. */
void qf_calib_hash(struct qf_calib *cs);
void qf_calib_free(struct qf_calib *cs);

/*
 * Statistics of one linear's inputs over the calibration set: what the
 * quantizers need.  h: X^T X in fp32 [in, in] (upper triangle valid,
 * then mirrored by qf_calib_stats_finish); mean_abs / mean_sq per input
 * channel; n rows seen.
 */
struct qf_lin_stats {
	int64_t in;
	int64_t n;			/* rows (tokens) accumulated */
	float *h;			/* [in, in] or NULL when not asked */
	double *sum_abs;		/* [in] */
	double *sum_sq;			/* [in] */
	float *xs;			/* [nxs, in]: the first input rows */
	int64_t nxs;			/* rows kept so far */
	int64_t xs_cap;			/* rows to keep (0: none) */
};
int qf_lin_stats_init(struct qf_lin_stats *s, int64_t in, bool hessian);
/* Accumulate rows x [n, in] (SSYRK for h). */
void qf_lin_stats_add(struct qf_lin_stats *s, const float *x, int64_t n);
/* Mirror h to a full symmetric matrix. */
void qf_lin_stats_finish(struct qf_lin_stats *s);
void qf_lin_stats_free(struct qf_lin_stats *s);

/*
 * The driver.  For each decoder layer in order: load its fp32 weights,
 * then for each stage ({q,k,v}, {o}, {gate,up}, {down}) run the layer on
 * the calibration activations up to the stage's linears (the rest is
 * skipped), accumulating their stats once per distinct input, and call
 * quantize(), which replaces their weights in ly (fake-quantized fp32).
 * With sequential (GPTQ's true sequential) each stage sees the earlier
 * stages quantized; without, all stats come from the original layer and
 * quantize() runs after.  Finally the quantized layer produces the next
 * layer's input.  Memory: one layer's fp32 weights, the activations
 * [nseq * seqlen, hidden] twice, the stage's stats.
 */
struct qf_calib_ops {
	bool hessian;			/* accumulate X^T X */
	bool sequential;		/* true-sequential stages */
	/* Replace the weights of linears lin[0..n) of layer l in ly. */
	int (*quantize)(void *arg, int layer, struct qf_tf_layer *ly,
			const enum qf_tf_linear *lin, int n,
			struct qf_lin_stats *stats);
	/*
	 * Optional: *cached = true after loading layer l's already
	 * quantized weights into ly (resume); its stages are skipped.
	 */
	int (*layer_cached)(void *arg, int layer, struct qf_tf_layer *ly,
			    bool *cached);
	/* Keep the first sample_rows input rows of each linear (xs). */
	int64_t sample_rows;
	/*
	 * Not sequential only: call quantize() once per layer with all
	 * seven linears and their statistics (AWQ's scales couple them).
	 */
	bool whole_layer;
	/* Optional: seconds spent accumulating statistics (added to). */
	double *stats_seconds;
	/* Optional: the layer is done (x is its quantized output). */
	int (*layer_done)(void *arg, int layer, const float *x, int64_t ntok,
			  double seconds);
	/*
	 * Block reconstruction (BRECQ) instead of statistics: block() gets
	 * the layer's input as the quantized layers before produce it (x)
	 * and the full-precision layer's output on the full-precision
	 * input (y), both [nseq * seqlen, hidden], and replaces the
	 * weights in ly.  The driver keeps three activation arrays.
	 */
	int (*block)(void *arg, int layer, struct qf_tf_layer *ly,
		     const float *x, const float *y, int nseq, int seqlen);
};
/*
 * Floats of one layer's importance matrix (kq variants): the input
 * channels of q, k, v, o, gate, up, down in that order.
 */
size_t qf_kq_imatrix_len(const struct qf_tf_config *c);
/* Offset of linear lin's channels in it. */
size_t qf_kq_imatrix_off(const struct qf_tf_config *c, enum qf_tf_linear lin);
int qf_calib_run(const struct qf_model *m, const struct qf_tf_config *c,
		 const struct qf_calib *cs, const struct qf_calib_ops *ops,
		 void *arg);

/* ------------------------------------------------------------------ */
/* AWQ of a whole decoder layer (awq_layer.c)                          */

struct qf_awq_linear_res {
	uint8_t *q;			/* IN: [out, in] buffers the caller */
	uint16_t *sc;			/*  allocates for quantized linears; */
	int32_t *zero;			/*  OUT: the result ([out, ngroups]) */
	double loss;			/* relative output error, scaled domain */
	double loss_rtn;		/* plain RTN, same grid, no scales */
	double alpha;			/* of its scale group; -1: not scaled */
	int64_t flips;			/* heuristic rounding flips */
};

struct qf_awq_layer_opts {
	bool quantize[QF_TF_NLINEAR];	/* which linears are quantized */
	bool fold_in;			/* q/k/v scales into input_layernorm */
	bool fold_post;			/* gate/up scales into post_attn norm */
	bool l2;			/* salience sqrt(mean x^2) */
	bool reflip;			/* GQA ReFlip of q/k (needs xs) */
	bool fold_only;			/* tests: fold the scales, no more */
};

struct qf_awq_layer_res {
	struct qf_awq_linear_res lin[QF_TF_NLINEAR];
	double score_before;		/* ReFlip: relative score error */
	double score_after;
	int64_t reflips;
};

/*
 * AWQ of layer ly with the statistics (h, sums, and for ReFlip the input
 * sample xs of q_proj) of its linears' inputs: scales searched and folded
 * into ly's norms and weights, clipping, RTN, heuristic flips, ReFlip.
 * On return ly holds the dequantized (scaled) weights and the folded
 * norms: the quantized layer.  stats are transformed in place.
 * Returns 0, QF_ENUMERIC, -EINVAL, -ENOMEM.
 */
int qf_awq_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		 struct qf_lin_stats *stats, const struct qf_awq_opts *o,
		 const struct qf_awq_layer_opts *lo,
		 struct qf_awq_layer_res *res);

/* ------------------------------------------------------------------ */
/* evaluation                                                         */

struct qf_eval_result {
	int64_t tokens;			/* predicted tokens */
	int windows;			/* windows evaluated */
	int ctx;			/* window length incl. BOS */
	double nll;			/* mean negative log-likelihood, nats */
	double ppl;			/* exp(nll) */
	double seconds;			/* wall time of the forward passes */
	uint64_t weight_bytes;		/* bytes of the weight files */
};
/*
 * Perplexity of text under model m: the text is tokenized whole (no
 * special tokens) and cut into non-overlapping chunks of ctx - 1 tokens,
 * each run as [BOS] + chunk (or the chunk alone without a BOS); every
 * chunk token is predicted once.  The protocol of shared/data/README.md.
 */
int qf_eval_ppl(const struct qf_model *m, const struct qf_tok *tok,
		const char *text, size_t len, int ctx,
		struct qf_eval_result *out);

struct qf_mc_result {
	int questions;			/* questions scored */
	int correct;			/* right by mean log-lik per token */
	int correct_raw;		/* right by summed log-likelihood */
	double accuracy;		/* correct / questions */
	double accuracy_raw;		/* correct_raw / questions */
	int64_t tokens;			/* tokens run, every choice */
	double seconds;			/* wall time incl. tokenization */
};
/*
 * Zero-shot multiple-choice accuracy (eval_mc.c): jsonl holds one
 * {"question": text, "choices": [texts], "answer": 0-based index} per
 * line (blank lines skipped); the first limit questions are scored
 * (limit <= 0: all).  Each choice is scored by the log-likelihood of
 * " " + choice after "Question: <q>\nAnswer:" (BOS first when the
 * tokenizer has one, at most ctx tokens, the prompt cut from the left),
 * divided by its token count; the best choice is the prediction.
 * Returns 0, QF_EFORMAT (a malformed line, logged), -EINVAL (no
 * question, ctx < 2), QF_EUNSUPPORTED, -ENOMEM.
 */
int qf_eval_mc(const struct qf_model *m, const struct qf_tok *tok,
	       const char *jsonl, size_t len, int limit, int ctx,
	       struct qf_mc_result *out);

/*
 * Attention-score error of variant var against its source src on text:
 * per decoder layer (err [layers]), the relative error of the pre-RoPE
 * scores over all token pairs of each of the first `windows` windows of
 * ctx tokens (BOS + ctx - 1), averaged; var's q/k are read dequantized
 * and carried to the source's input domain (AWQ folds scales into
 * input_layernorm).  Returns 0, -EINVAL (text too short), QF_EFORMAT,
 * QF_EUNSUPPORTED, -ENOMEM.
 */
int qf_eval_scores(const struct qf_model *src, const struct qf_model *var,
		   const struct qf_tok *tok, const char *text, size_t len,
		   int ctx, int windows, double *err);

#endif /* QF_QUANT_H */
