/*
 * qf_cuda.h - private to quant/: the interface between backend.c and the
 * CUDA module (cuda.cu, built as libqf_cuda.so when nvcc is found).
 *
 * The module is loaded with dlopen(3) on first use, so the quantfs
 * program runs on machines without the CUDA libraries, and one binary
 * serves both.  All pointers given to the module are host pointers; the
 * module copies to and from the device, serializing callers with its own
 * mutex.  Every function returns 0, or -1 when the device failed (the
 * caller then does the work on the CPU; the module logs nothing, it
 * fills a reason when asked).
 */
#ifndef QF_CUDA_H
#define QF_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QF_CUDA_ABI 2

/*
 * The core of GPTQ for one linear, after the host has dropped dead
 * columns, permuted W and H (act order) and computed any grids that do
 * not depend on the loop (static groups; one group per row).
 */
struct qf_cuda_gptq {
	int64_t out, in;
	int64_t gs;			/* group size; == in: one group */
	int64_t bs;			/* block size, <= QF_CUDA_GPTQ_BS */
	int bits;
	bool sym;
	bool grids_given;		/* static groups or gs == in */
	const int64_t *perm;		/* [in] position -> column */
	float damp;			/* fraction of mean diag(H) */
	const float *wp;		/* [out, in] permuted W */
	const float *hp;		/* [in, in] permuted H */
	/* [ngroups][out]: in when grids_given, else out */
	uint16_t *gsc16;
	float *gsc;
	int32_t *gz;
	uint8_t *qp;			/* [out, in] permuted codes, out */
	double loss;			/* out: the GPTQ objective */
	int damp_retries;		/* out: Cholesky retries (x10 damp) */
	double chol_s, loop_s, lazy_s;	/* out: phase seconds */
	double lazy_flop;
};
#define QF_CUDA_GPTQ_BS 128

struct qf_cuda_ops {
	int abi;			/* QF_CUDA_ABI */
	/* 0 when a device works; else -1 and the reason in why */
	int (*init)(char *why, size_t cap);
	/* device name and memory, for logs */
	void (*describe)(char *out, size_t cap);
	/* row-major C[m, n] = alpha op(A) op(B) + beta C, as cblas */
	int (*sgemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
		     float alpha, const float *a, int64_t lda, const float *b,
		     int64_t ldb, float beta, float *c, int64_t ldc);
	/* row-major upper triangle of C[n, n] += X^T X, X [k, n] */
	int (*ssyrk)(int64_t n, int64_t k, const float *x, int64_t ldx,
		     float *c);
	/* 1 (QF_ENUMERIC): H not positive definite after the retries */
	int (*gptq)(struct qf_cuda_gptq *g);
	/*
	 * Tests: the kernel's code for block [i1, i1 + cnt) run on the host
	 * over every row, with U (the Cholesky factor, row-major upper) from
	 * the caller; g->wp is read only, g->qp / grids written; err
	 * [out, cnt], rowloss [out] added to, *bad set on a grid overflow.
	 */
	void (*gptq_block_host)(const struct qf_cuda_gptq *g, int64_t i1,
				int64_t cnt, const float *u, float *err,
				double *rowloss, int *bad);
};

/* The module's one exported symbol. */
const struct qf_cuda_ops *qf_cuda_ops_v1(void);

/*
 * backend.c: the module's operations, loaded but not initialized (no
 * device needed: for the host-run kernel code of the tests); NULL with
 * the reason in why when it cannot be loaded.
 */
const struct qf_cuda_ops *qf_backend_cuda_ops(char *why, size_t cap);
/* backend.c: GPTQ's core on the device: 0, 1 (H not PD), -1 (CPU). */
int qf_backend_gptq(struct qf_cuda_gptq *g);

#ifdef __cplusplus
}
#endif

#endif
