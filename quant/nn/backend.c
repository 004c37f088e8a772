/*
 * backend.c - the compute backend: where matrix products, Hessian
 * accumulation and GPTQ's core run.  "cpu" is OpenBLAS/LAPACK; "cuda"
 * loads the CUDA module (libqf_cuda.so, cuda.cu) with dlopen, so one
 * quantfs binary runs with or without the CUDA libraries and a device.
 *
 * The backend is a process-wide choice made once (mount option
 * backend=, or QUANTFS_BACKEND for the tools).  On the cuda backend a
 * product goes to the device only when it is large enough to win after
 * the copies (QF_CUDA_MIN_FLOP); the decision depends on the shapes
 * alone, so a run's results are reproducible.  A device call that fails
 * (out of memory, say) is done on the CPU instead, with one warning.
 */
#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "qf_cuda.h"
#include "nn.h"

/* OpenBLAS's cblas.h declares them; a generic cblas.h does not. */
extern void openblas_set_num_threads(int n);
extern char *openblas_get_corename(void);

/* Products below this many flops stay on the CPU. */
#define QF_CUDA_MIN_FLOP (1 << 27)

static pthread_mutex_t sel_lock = PTHREAD_MUTEX_INITIALIZER;
static enum qf_backend current = QF_BACKEND_CPU;
static const struct qf_cuda_ops *cu;	/* the module, once a device worked */
static int warned;

bool qf_backend_cuda_built(void)
{
#ifdef QF_CUDA_MODULE_BUILD
	return true;
#else
	return false;
#endif
}

const char *qf_backend_name(enum qf_backend b)
{
	return b == QF_BACKEND_CUDA ? "cuda" : "cpu";
}

enum qf_backend qf_backend_current(void)
{
	return current;
}

/* dlopen the module: $QUANTFS_CUDA_MODULE, the build tree, the install */
static const struct qf_cuda_ops *load_module(char *why, size_t cap)
{
#ifdef QF_CUDA_MODULE_BUILD
	const char *paths[] = { getenv("QUANTFS_CUDA_MODULE"),
				QF_CUDA_MODULE_INSTALL, QF_CUDA_MODULE_BUILD };
	const struct qf_cuda_ops *(*get)(void);
	const char *err = "not found";
	void *h = NULL;
	size_t i;

	for (i = 0; i < sizeof(paths) / sizeof(paths[0]) && !h; i++) {
		if (!paths[i] || !*paths[i])
			continue;
		h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
		if (!h)
			err = dlerror();
	}
	if (!h) {
		snprintf(why, cap, "the CUDA module could not be loaded: %s",
			 err);
		return NULL;
	}
	*(void **)&get = dlsym(h, "qf_cuda_ops_v1");
	if (!get || get()->abi != QF_CUDA_ABI) {
		snprintf(why, cap, "the CUDA module is of another version");
		dlclose(h);
		return NULL;
	}
	return get();
#else
	snprintf(why, cap, "this quantfs was built without CUDA (nvcc was "
		 "not found at build time)");
	return NULL;
#endif
}

/* The module, loaded once (sel_lock held); NULL with why. */
static const struct qf_cuda_ops *module_locked(char *why, size_t cap)
{
	static const struct qf_cuda_ops *module;

	if (!module)
		module = load_module(why, cap);
	return module;
}

const struct qf_cuda_ops *qf_backend_cuda_ops(char *why, size_t cap)
{
	const struct qf_cuda_ops *ops;
	char tmp[256];

	pthread_mutex_lock(&sel_lock);
	ops = module_locked(why ? why : tmp, why ? cap : sizeof(tmp));
	pthread_mutex_unlock(&sel_lock);
	return ops;
}

int qf_backend_select(const char *want, char *why, size_t cap)
{
	const struct qf_cuda_ops *ops;
	bool must;

	why[0] = 0;
	if (!want || !strcmp(want, "cpu")) {
		pthread_mutex_lock(&sel_lock);
		current = QF_BACKEND_CPU;
		pthread_mutex_unlock(&sel_lock);
		return QF_BACKEND_CPU;
	}
	must = !strcmp(want, "cuda");
	if (!must && strcmp(want, "auto"))
		return QF_ESPEC;
	pthread_mutex_lock(&sel_lock);
	ops = module_locked(why, cap);
	if (ops && ops->init(why, cap) == 0) {
		cu = ops;
		current = QF_BACKEND_CUDA;
	} else {
		current = QF_BACKEND_CPU;
	}
	pthread_mutex_unlock(&sel_lock);
	return current;
}

void qf_backend_describe(char *out, size_t cap)
{
	if (current == QF_BACKEND_CUDA && cu)
		cu->describe(out, cap);
	else
		snprintf(out, cap, "OpenBLAS, %s kernels%s", qf_blas_kernels(),
			 getenv("QF_BLAS_CHOSEN") ? " chosen by quantfs" : "");
}

static void fell_back(const char *what)
{
	if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
		qf_warn("cuda: %s failed on the device, done on the CPU "
			"(warned once)", what);
}

static bool on_device(double flop)
{
	return current == QF_BACKEND_CUDA && cu && flop >= QF_CUDA_MIN_FLOP;
}

void qf_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
	      float alpha, const float *a, int64_t lda, const float *b,
	      int64_t ldb, float beta, float *c, int64_t ldc)
{
	if (on_device(2.0 * (double)m * (double)n * (double)k)) {
		if (!cu->sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,
			       ldc))
			return;
		fell_back("a matrix product");
	}
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
		    tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
		    alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

void qf_ssyrk_t(int64_t n, int64_t k, const float *x, int64_t ldx, float *c)
{
	if (on_device((double)n * (double)n * (double)k)) {
		if (!cu->ssyrk(n, k, x, ldx, c))
			return;
		fell_back("X^T X");
	}
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, (int)k,
		    1.0f, x, (int)ldx, 1.0f, c, (int)n);
}

int qf_backend_gptq(struct qf_cuda_gptq *g)
{
	int ret;

	if (!on_device(2.0 * (double)g->out * (double)g->in * (double)g->in))
		return -1;
	ret = cu->gptq(g);
	if (ret < 0)
		fell_back("GPTQ");
	return ret;
}

void qf_backend_set_threads(int n)
{
	openblas_set_num_threads(n);
}

const char *qf_blas_kernels(void)
{
	const char *k = openblas_get_corename();

	return k ? k : "unknown";
}

void qf_blas_fix_kernels(char **argv)
{
	const char *want = NULL;
	char self[4096];
	ssize_t n;

	if (getenv("OPENBLAS_CORETYPE") ||
	    strcasecmp(qf_blas_kernels(), "prescott"))
		return;
	__builtin_cpu_init();	/* (AVX states checked against XGETBV) */
	if (__builtin_cpu_supports("avx512f") &&
	    __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512dq") &&
	    __builtin_cpu_supports("avx512vl"))
		want = "SkylakeX";
	else if (__builtin_cpu_supports("avx2") &&
		 __builtin_cpu_supports("fma"))
		want = "Haswell";
	if (!want || setenv("OPENBLAS_CORETYPE", want, 1) ||
	    setenv("QF_BLAS_CHOSEN", "1", 1))
		return;
	/* by its own path, not /proc/self/exe: ps names it by that */
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[n > 0 ? n : 0] = 0;
	execv(n > 0 && !strstr(self, " (deleted)") ? self : "/proc/self/exe",
	      argv);
	unsetenv("OPENBLAS_CORETYPE");	/* no exec: the generic kernels */
	unsetenv("QF_BLAS_CHOSEN");
}
