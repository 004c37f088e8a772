/*
 * cuda.cu - the CUDA backend: cuBLAS GEMM and SYRK, cuSOLVER Cholesky and
 * inverse, and GPTQ's column loop as a kernel.  Built as a module
 * (libqf_cuda.so) that backend.c loads with dlopen; see qf_cuda.h.
 *
 * Arithmetic follows the CPU code so that results differ only where the
 * order of summation differs (GEMM, Cholesky): no fused multiply-add in
 * the kernels (built with --fmad=false), IEEE division, round-half-even
 * (rintf) and fp16 scales rounded to nearest even (__float2half_rn), the
 * same rules as quant/method/rtn.c.
 *
 * Device memory: three growable buffers for GEMM operands, kept between
 * calls; GPTQ allocates its own for the duration of one linear.  One
 * mutex serializes all callers (one device, one stream).
 */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "qf_cuda.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int state;			/* 0 untried, 1 ready, -1 failed */
static char reason[256];
static cublasHandle_t blas;
static cusolverDnHandle_t solver;

struct dbuf {
	void *p;
	size_t cap;
};
static struct dbuf buf[3];

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *dgrow(struct dbuf *b, size_t bytes)
{
	if (bytes <= b->cap)
		return b->p;
	if (b->p)
		cudaFree(b->p);
	b->p = NULL;
	b->cap = 0;
	bytes = (bytes + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
	if (cudaMalloc(&b->p, bytes) != cudaSuccess) {
		b->p = NULL;
		return NULL;
	}
	b->cap = bytes;
	return b->p;
}

static int init_locked(void)
{
	int n = 0;
	cudaError_t e;
	void *probe = NULL;

	if (state)
		return state > 0 ? 0 : -1;
	state = -1;
	e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		snprintf(reason, sizeof(reason), "no CUDA device: %s",
			 cudaGetErrorString(e));
		return -1;
	}
	if (n < 1) {
		snprintf(reason, sizeof(reason), "no CUDA device");
		return -1;
	}
	if ((e = cudaSetDevice(0)) != cudaSuccess ||
	    (e = cudaMalloc(&probe, 1 << 20)) != cudaSuccess) {
		snprintf(reason, sizeof(reason), "CUDA device 0 unusable: %s",
			 cudaGetErrorString(e));
		return -1;
	}
	cudaFree(probe);
	if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
		snprintf(reason, sizeof(reason), "cublasCreate failed");
		return -1;
	}
	/* fp32 products in fp32 (no TF32): results near the CPU's */
	cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH);
	if (cusolverDnCreate(&solver) != CUSOLVER_STATUS_SUCCESS) {
		snprintf(reason, sizeof(reason), "cusolverDnCreate failed");
		return -1;
	}
	state = 1;
	return 0;
}

static int cu_init(char *why, size_t cap)
{
	int ret;

	pthread_mutex_lock(&lock);
	ret = init_locked();
	if (ret && why && cap)
		snprintf(why, cap, "%s", reason);
	pthread_mutex_unlock(&lock);
	return ret;
}

static void cu_describe(char *out, size_t cap)
{
	struct cudaDeviceProp p;

	if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
		snprintf(out, cap, "CUDA device 0");
		return;
	}
	snprintf(out, cap, "%s, %d SMs, %.1f GiB, compute %d.%d", p.name,
		 p.multiProcessorCount,
		 (double)p.totalGlobalMem / (1024.0 * 1024 * 1024), p.major,
		 p.minor);
}

/* Copy a rows x cols row-major block with leading dimension ld. */
static bool up2d(float *dst, const float *src, int64_t rows, int64_t cols,
		 int64_t ld)
{
	return cudaMemcpy2D(dst, (size_t)cols * 4, src, (size_t)ld * 4,
			    (size_t)cols * 4, (size_t)rows,
			    cudaMemcpyHostToDevice) == cudaSuccess;
}

static bool down2d(float *dst, int64_t ld, const float *src, int64_t rows,
		   int64_t cols)
{
	return cudaMemcpy2D(dst, (size_t)ld * 4, src, (size_t)cols * 4,
			    (size_t)cols * 4, (size_t)rows,
			    cudaMemcpyDeviceToHost) == cudaSuccess;
}

static int cu_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
		    float alpha, const float *a, int64_t lda, const float *b,
		    int64_t ldb, float beta, float *c, int64_t ldc)
{
	int64_t ar = ta ? k : m, ac = ta ? m : k;
	int64_t br = tb ? n : k, bc = tb ? k : n;
	float *da, *db, *dc;
	int ret = -1;

	pthread_mutex_lock(&lock);
	if (init_locked())
		goto out;
	da = (float *)dgrow(&buf[0], (size_t)(ar * ac) * 4);
	db = (float *)dgrow(&buf[1], (size_t)(br * bc) * 4);
	dc = (float *)dgrow(&buf[2], (size_t)(m * n) * 4);
	if (!da || !db || !dc)
		goto out;
	if (!up2d(da, a, ar, ac, lda) || !up2d(db, b, br, bc, ldb))
		goto out;
	if (beta != 0 && !up2d(dc, c, m, n, ldc))
		goto out;
	/* row-major C = A B is column-major C^T = B^T A^T */
	if (cublasSgemm(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
			ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n, (int)m, (int)k,
			&alpha, db, (int)bc, da, (int)ac, &beta, dc,
			(int)n) != CUBLAS_STATUS_SUCCESS)
		goto out;
	if (!down2d(c, ldc, dc, m, n))
		goto out;
	ret = 0;
out:
	pthread_mutex_unlock(&lock);
	return ret;
}

static int cu_ssyrk(int64_t n, int64_t k, const float *x, int64_t ldx,
		    float *c)
{
	const float one = 1.0f;
	float *dx, *dc;
	int ret = -1;

	pthread_mutex_lock(&lock);
	if (init_locked())
		goto out;
	dx = (float *)dgrow(&buf[0], (size_t)(k * n) * 4);
	dc = (float *)dgrow(&buf[2], (size_t)(n * n) * 4);
	if (!dx || !dc || !up2d(dx, x, k, n, ldx) ||
	    cudaMemcpy(dc, c, (size_t)(n * n) * 4,
		       cudaMemcpyHostToDevice) != cudaSuccess)
		goto out;
	/*
	 * Row-major X [k, n] is column-major X^T [n, k]; C = X^T X is
	 * column-major A A^T with A = X^T, and the row-major upper triangle
	 * is the column-major lower one.
	 */
	if (cublasSsyrk(blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, (int)n,
			(int)k, &one, dx, (int)n, &one, dc,
			(int)n) != CUBLAS_STATUS_SUCCESS)
		goto out;
	if (cudaMemcpy(c, dc, (size_t)(n * n) * 4, cudaMemcpyDeviceToHost) !=
	    cudaSuccess)
		goto out;
	ret = 0;
out:
	pthread_mutex_unlock(&lock);
	return ret;
}

/* ------------------------------------------------------------------ */
/* GPTQ                                                                */

/* IEEE division on both sides (the device's '/' may not round exactly) */
#ifdef __CUDA_ARCH__
#define DIV_RN(a, b) __fdiv_rn((a), (b))
#else
#define DIV_RN(a, b) ((a) / (b))
#endif

/* qf_rtn_grid (quant/method/rtn.c), on the device (and the host, for tests). */
__host__ __device__ static bool grid(float lo, float hi, int bits, bool sym,
				     uint16_t *sc16, float *sc, int32_t *zero)
{
	int maxq = (1 << bits) - 1;
	float scale;
	int32_t z;
	__half h;

	lo = lo < 0 ? lo : 0;
	hi = hi > 0 ? hi : 0;
	if (sym) {
		float m = fabsf(lo) > hi ? fabsf(lo) : hi;

		if (m == 0)
			m = 1;
		scale = DIV_RN(2 * m, (float)maxq);
		z = (maxq + 1) / 2;
	} else {
		if (lo == 0 && hi == 0)
			lo = -1, hi = 1;
		scale = DIV_RN(hi - lo, (float)maxq);
		z = (int32_t)rintf(DIV_RN(-lo, scale));
		if (z < 1) {
			z = 1;
			scale = DIV_RN(hi, (float)(maxq - 1));
		}
	}
	h = __float2half_rn(scale);
	*sc16 = __half_as_ushort(h);
	*sc = __half2float(h);
	if (!isfinite(*sc))
		return false;
	if (*sc == 0) {
		*sc16 = 1;
		*sc = __half2float(__ushort_as_half((unsigned short)1));
	}
	if (!sym && z > maxq)
		z = maxq;
	*zero = z;
	return true;
}

/*
 * One block of columns [i1, i1 + cnt) for row r: quantize each column,
 * feed its error forward inside the block (U's row), keep the scaled
 * errors for the lazy update of the columns after the block.  The kernel
 * runs it for one row per thread; tests run it on the host.
 */
__host__ __device__ static void gptq_row(int64_t r, int64_t out, int64_t in,
					 int64_t i1, int64_t cnt, int64_t gs,
					 int bits, bool sym, bool grids_given,
					 const int64_t *perm, const float *wp,
					 const float *u, uint16_t *gsc16,
					 float *gsc, int32_t *gz, uint8_t *qp,
					 float *err, double *rowloss, int *bad)
{
	float w1[QF_CUDA_GPTQ_BS];
	float maxq = (float)((1 << bits) - 1);
	double loss = 0;
	int64_t i, j;

	for (j = 0; j < cnt; j++)
		w1[j] = wp[r * in + i1 + j];
	for (i = 0; i < cnt; i++) {
		int64_t col = i1 + i, g;
		float d = u[col * in + col];
		const float *urow = u + col * in + i1;
		float sc, z, x, v, e;

		if (gs >= in) {
			g = 0;
		} else if (grids_given) {
			g = perm[col] / gs;
		} else {
			g = col / gs;
			if (col % gs == 0) {
				int64_t b = col + gs < in ? col + gs : in, c;
				float lo = wp[r * in + col], hi = lo;

				for (c = col; c < b; c++) {
					float t = wp[r * in + c];

					lo = t < lo ? t : lo;
					hi = t > hi ? t : hi;
				}
				if (!grid(lo, hi, bits, sym,
					  &gsc16[g * out + r], &gsc[g * out + r],
					  &gz[g * out + r]))
					*bad = 1;
			}
		}
		sc = gsc[g * out + r];
		z = (float)gz[g * out + r];
		x = w1[i];
		v = rintf(DIV_RN(x, sc)) + z;
		v = v < 0 ? 0 : v > maxq ? maxq : v;
		qp[r * in + col] = (uint8_t)v;
		e = DIV_RN(x - sc * (v - z), d);
		loss += (double)e * e / 2;
		err[r * cnt + i] = e;
		for (j = i + 1; j < cnt; j++)
			w1[j] -= e * urow[j];
	}
	rowloss[r] += loss;
}

__global__ static void gptq_block(int64_t out, int64_t in, int64_t i1,
				  int64_t cnt, int64_t gs, int bits, bool sym,
				  bool grids_given, const int64_t *perm,
				  const float *wp, const float *u,
				  uint16_t *gsc16, float *gsc, int32_t *gz,
				  uint8_t *qp, float *err, double *rowloss,
				  int *bad)
{
	int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (r < out)
		gptq_row(r, out, in, i1, cnt, gs, bits, sym, grids_given, perm,
			 wp, u, gsc16, gsc, gz, qp, err, rowloss, bad);
}

/* The kernel's block, every row on the host (tests). */
static void cu_gptq_block_host(const struct qf_cuda_gptq *g, int64_t i1,
			       int64_t cnt, const float *u, float *err,
			       double *rowloss, int *bad)
{
	int64_t r;

	for (r = 0; r < g->out; r++)
		gptq_row(r, g->out, g->in, i1, cnt, g->gs >= g->in ? g->in :
			 g->gs, g->bits, g->sym, g->grids_given, g->perm,
			 g->wp, u, g->gsc16, g->gsc, g->gz, g->qp, err,
			 rowloss, bad);
}

/* mean of the diagonal, in double, in index order (as gptq.c) */
static double diag_mean(const float *h, int64_t n)
{
	double m = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		m += h[i * n + i];
	return m / (double)n;
}

__global__ static void add_diag(float *h, int64_t n, float damp)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		h[i * n + i] += damp;
}

/*
 * One cuSOLVER step on dh [nn, nn]: potri (inverse) or potrf, its info
 * copied back into *info.  Row-major symmetric = column-major; 'L' there
 * is the row-major upper triangle (as gptq.c with LAPACK).
 * Returns 0, or -1 when a call failed.
 */
static int chol_step(bool inverse, int nn, float *dh, float *work, int lw,
		     int *dinfo, int *info)
{
	cusolverStatus_t st = inverse ?
		cusolverDnSpotri(solver, CUBLAS_FILL_MODE_LOWER, nn, dh, nn,
				 work, lw, dinfo) :
		cusolverDnSpotrf(solver, CUBLAS_FILL_MODE_LOWER, nn, dh, nn,
				 work, lw, dinfo);

	if (st != CUSOLVER_STATUS_SUCCESS ||
	    cudaMemcpy(info, dinfo, sizeof(int), cudaMemcpyDeviceToHost) !=
		    cudaSuccess)
		return -1;
	return 0;
}

/* U = upper Cholesky factor of (H + damp I)^-1 (row-major), in dh */
static int chol_inverse(struct qf_cuda_gptq *g, float *dh, int *dinfo)
{
	int64_t n = g->in;
	int nn = (int)n, lw1 = 0, lw2 = 0, info = 1, attempt;
	double mean = diag_mean(g->hp, n);
	float *work = NULL;
	int ret = -1;

	if (cusolverDnSpotrf_bufferSize(solver, CUBLAS_FILL_MODE_LOWER, nn,
					dh, nn, &lw1) !=
		    CUSOLVER_STATUS_SUCCESS ||
	    cusolverDnSpotri_bufferSize(solver, CUBLAS_FILL_MODE_LOWER, nn,
					dh, nn, &lw2) !=
		    CUSOLVER_STATUS_SUCCESS)
		return -1;
	if (lw2 > lw1)
		lw1 = lw2;
	if (cudaMalloc(&work, (size_t)(lw1 > 1 ? lw1 : 1) * 4) != cudaSuccess)
		return -1;
	for (attempt = 0; attempt < 6; attempt++) {
		float damp = (float)(g->damp * mean * pow(10, attempt));

		if (cudaMemcpy(dh, g->hp, (size_t)(n * n) * 4,
			       cudaMemcpyHostToDevice) != cudaSuccess)
			goto out;
		add_diag<<<(unsigned)((n + 255) / 256), 256>>>(dh, n, damp);
		/* factor, invert, factor the inverse; each info read back
		 * before the next step runs */
		if (chol_step(false, nn, dh, work, lw1, dinfo, &info) ||
		    (!info && chol_step(true, nn, dh, work, lw1, dinfo, &info)) ||
		    (!info && chol_step(false, nn, dh, work, lw1, dinfo, &info)))
			goto out;
		if (!info)
			break;
		g->damp_retries++;
	}
	ret = info ? 1 : 0;
out:
	cudaFree(work);
	return ret;
}

static int cu_gptq(struct qf_cuda_gptq *g)
{
	int64_t out = g->out, in = g->in;
	int64_t gs = g->gs >= in ? in : g->gs, ng = (in + gs - 1) / gs;
	size_t gbytes = (size_t)(ng * out);
	float *dw = NULL, *dh = NULL, *derr = NULL, *dgsc = NULL;
	uint16_t *dgsc16 = NULL;
	int32_t *dgz = NULL;
	int64_t *dperm = NULL;
	uint8_t *dq = NULL;
	double *dloss = NULL, *hloss = NULL;
	int *dinfo = NULL, bad = 0;
	const float minus1 = -1.0f, one = 1.0f;
	double t0;
	int64_t i1, r;
	int ret = -1;

	if (g->bs > QF_CUDA_GPTQ_BS || g->bs < 1)
		return -1;
	pthread_mutex_lock(&lock);
	if (init_locked())
		goto out;
	hloss = (double *)calloc((size_t)out, sizeof(*hloss));
	if (!hloss ||
	    cudaMalloc(&dw, (size_t)(out * in) * 4) != cudaSuccess ||
	    cudaMalloc(&dh, (size_t)(in * in) * 4) != cudaSuccess ||
	    cudaMalloc(&derr, (size_t)(out * g->bs) * 4) != cudaSuccess ||
	    cudaMalloc(&dgsc, gbytes * 4) != cudaSuccess ||
	    cudaMalloc(&dgsc16, gbytes * 2) != cudaSuccess ||
	    cudaMalloc(&dgz, gbytes * 4) != cudaSuccess ||
	    cudaMalloc(&dperm, (size_t)in * 8) != cudaSuccess ||
	    cudaMalloc(&dq, (size_t)(out * in)) != cudaSuccess ||
	    cudaMalloc(&dloss, (size_t)out * 8) != cudaSuccess ||
	    cudaMalloc(&dinfo, 2 * sizeof(int)) != cudaSuccess)
		goto out;
	t0 = now();
	ret = chol_inverse(g, dh, dinfo);
	g->chol_s += now() - t0;
	if (ret)
		goto out;
	ret = -1;
	if (cudaMemcpy(dw, g->wp, (size_t)(out * in) * 4,
		       cudaMemcpyHostToDevice) != cudaSuccess ||
	    cudaMemcpy(dperm, g->perm, (size_t)in * 8,
		       cudaMemcpyHostToDevice) != cudaSuccess ||
	    cudaMemset(dloss, 0, (size_t)out * 8) != cudaSuccess ||
	    cudaMemset(dinfo, 0, sizeof(int)) != cudaSuccess)
		goto out;
	if (g->grids_given &&
	    (cudaMemcpy(dgsc, g->gsc, gbytes * 4, cudaMemcpyHostToDevice) !=
		     cudaSuccess ||
	     cudaMemcpy(dgsc16, g->gsc16, gbytes * 2,
			cudaMemcpyHostToDevice) != cudaSuccess ||
	     cudaMemcpy(dgz, g->gz, gbytes * 4, cudaMemcpyHostToDevice) !=
		     cudaSuccess))
		goto out;
	for (i1 = 0; i1 < in; i1 += g->bs) {
		int64_t i2 = i1 + g->bs < in ? i1 + g->bs : in, cnt = i2 - i1;

		t0 = now();
		gptq_block<<<(unsigned)((out + 127) / 128), 128>>>(
			out, in, i1, cnt, gs, g->bits, g->sym, g->grids_given,
			dperm, dw, dh, dgsc16, dgsc, dgz, dq, derr, dloss,
			dinfo);
		if (cudaDeviceSynchronize() != cudaSuccess)
			goto out;
		g->loop_s += now() - t0;
		t0 = now();
		/*
		 * W[:, i2:] -= Err U[i1:i2, i2:] (row-major), i.e. column-
		 * major W^T = W^T - U^T Err^T
		 */
		if (i2 < in &&
		    cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)(in - i2),
				(int)out, (int)cnt, &minus1, dh + i1 * in + i2,
				(int)in, derr, (int)cnt, &one, dw + i2,
				(int)in) != CUBLAS_STATUS_SUCCESS)
			goto out;
		if (cudaDeviceSynchronize() != cudaSuccess)
			goto out;
		g->lazy_s += now() - t0;
		g->lazy_flop += 2.0 * (double)out * (double)(in - i2) *
				(double)cnt;
	}
	if (cudaMemcpy(&bad, dinfo, sizeof(int), cudaMemcpyDeviceToHost) !=
		    cudaSuccess ||
	    cudaMemcpy(g->qp, dq, (size_t)(out * in), cudaMemcpyDeviceToHost) !=
		    cudaSuccess ||
	    cudaMemcpy(g->gsc, dgsc, gbytes * 4, cudaMemcpyDeviceToHost) !=
		    cudaSuccess ||
	    cudaMemcpy(g->gsc16, dgsc16, gbytes * 2,
		       cudaMemcpyDeviceToHost) != cudaSuccess ||
	    cudaMemcpy(g->gz, dgz, gbytes * 4, cudaMemcpyDeviceToHost) !=
		    cudaSuccess ||
	    cudaMemcpy(hloss, dloss, (size_t)out * 8,
		       cudaMemcpyDeviceToHost) != cudaSuccess)
		goto out;
	g->loss = 0;
	for (r = 0; r < out; r++)
		g->loss += hloss[r];
	ret = bad ? 1 : 0;
out:
	cudaFree(dw);
	cudaFree(dh);
	cudaFree(derr);
	cudaFree(dgsc);
	cudaFree(dgsc16);
	cudaFree(dgz);
	cudaFree(dperm);
	cudaFree(dq);
	cudaFree(dloss);
	cudaFree(dinfo);
	free(hloss);
	pthread_mutex_unlock(&lock);
	return ret;
}

static const struct qf_cuda_ops ops = {
	QF_CUDA_ABI, cu_init, cu_describe, cu_sgemm, cu_ssyrk, cu_gptq,
	cu_gptq_block_host,
};

extern "C" const struct qf_cuda_ops *qf_cuda_ops_v1(void)
{
	return &ops;
}
