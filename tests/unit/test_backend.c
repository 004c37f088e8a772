/*
 * test_backend.c - the compute backends.  Everywhere: backend names,
 * the fallback to the CPU with a reason when the CUDA module or a device
 * is missing, qf_sgemm / qf_ssyrk_t equal to OpenBLAS on the CPU.  Where
 * a CUDA device works (the GPU machine): cuBLAS products and X^T X
 * against OpenBLAS, and GPTQ on the device against GPTQ on the CPU for
 * every grid option, with the agreement and the times printed.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "method.h"
#include "qf_cuda.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double unif(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0;
}

static float gauss(void)
{
	double u = unif() + 1e-12, v = unif();

	return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static float *randn(int64_t n)
{
	float *x = malloc((size_t)n * sizeof(*x));
	int64_t i;

	for (i = 0; i < n; i++)
		x[i] = gauss();
	return x;
}

static double rel_diff(const float *a, const float *b, int64_t n)
{
	double num = 0, den = 0;
	int64_t i;

	for (i = 0; i < n; i++) {
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return sqrt(num / (den > 0 ? den : 1));
}

/* qf_sgemm against cblas in all four transposes, padded ld */
static double gemm_check(void)
{
	int64_t m = 300, n = 260, k = 900, pad = 7;
	double worst = 0;
	int ta, tb;

	for (ta = 0; ta < 2; ta++)
		for (tb = 0; tb < 2; tb++) {
			int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad;
			int64_t ldc = n + pad;
			float *a = randn((ta ? k : m) * lda);
			float *b = randn((tb ? n : k) * ldb);
			float *c = randn(m * ldc), *r = malloc((size_t)(m * ldc) *
							       sizeof(*r));
			double d;

			memcpy(r, c, (size_t)(m * ldc) * sizeof(*r));
			qf_sgemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 1.0f, c,
				 ldc);
			cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
				    tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
				    (int)k, 0.5f, a, (int)lda, b, (int)ldb, 1.0f, r,
				    (int)ldc);
			d = rel_diff(c, r, m * ldc);
			worst = d > worst ? d : worst;
			free(a);
			free(b);
			free(c);
			free(r);
		}
	return worst;
}

static double syrk_check(void)
{
	int64_t n = 640, k = 1200, i, j;
	float *x = randn(k * n), *c = calloc((size_t)(n * n), sizeof(float));
	float *r = calloc((size_t)(n * n), sizeof(float));
	double d;

	qf_ssyrk_t(n, k, x, n, c);
	qf_ssyrk_t(n, k, x, n, c);	/* accumulates */
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, (int)k,
		    2.0f, x, (int)n, 0.0f, r, (int)n);
	for (i = 0; i < n; i++)		/* only the upper triangle counts */
		for (j = 0; j < i; j++)
			c[i * n + j] = r[i * n + j] = 0;
	d = rel_diff(c, r, n * n);
	free(x);
	free(c);
	free(r);
	return d;
}

struct gptq_case {
	const char *name;
	int bits, group;
	bool sym, act, stat;
};

static const struct gptq_case cases[] = {
	{ "w4 g128", 4, 128, false, false, false },
	{ "w4 g32 (groups inside blocks)", 4, 32, false, false, false },
	{ "w4 g256 (groups across blocks)", 4, 256, false, false,
	  false },
	{ "w3 per channel", 3, -1, false, false, false },
	{ "w4 g128 act order", 4, 128, false, true, false },
	{ "w4 g128 act order static", 4, 128, false, true, true },
	{ "w4 g64 sym", 4, 64, true, false, false },
	{ "w8 g128", 8, 128, false, false, false },
};

struct gptq_run {
	uint8_t *q;
	uint16_t *sc;
	int32_t *z, *g;
	float *w;
	double loss, seconds;
	int ret;
};

static void gptq_once(const float *w0, const float *h0, int64_t out,
		      int64_t in, const struct gptq_case *gc, bool kernel,
		      struct gptq_run *r)
{
	struct qf_gptq_opts o = { .qp = { gc->bits, gc->group, gc->sym },
				  .act_order = gc->act,
				  .static_groups = gc->stat,
				  .kernel_on_host = kernel };
	int64_t ng = qf_ngroups(in, gc->group);
	float *h = malloc((size_t)(in * in) * sizeof(*h));
	double t0;

	r->w = malloc((size_t)(out * in) * sizeof(*r->w));
	r->q = malloc((size_t)(out * in));
	r->sc = malloc((size_t)(out * ng) * sizeof(*r->sc));
	r->z = malloc((size_t)(out * ng) * sizeof(*r->z));
	r->g = malloc((size_t)in * sizeof(*r->g));
	memcpy(r->w, w0, (size_t)(out * in) * sizeof(*r->w));
	memcpy(h, h0, (size_t)(in * in) * sizeof(*h));
	t0 = qf_now();
	r->ret = qf_gptq_quantize(r->w, out, in, h, &o, r->q, r->sc, r->z,
				  r->g, &r->loss);
	r->seconds = qf_now() - t0;
	free(h);
}

static void run_free(struct gptq_run *r)
{
	free(r->q);
	free(r->sc);
	free(r->z);
	free(r->g);
	free(r->w);
}

/* relative output error tr(dW H dW^T) / tr(W H W^T), in double */
static double out_err(const float *w, const float *wq, const float *h,
		      int64_t out, int64_t in)
{
	float *d = malloc((size_t)(out * in) * sizeof(*d));
	float *dh = malloc((size_t)(out * in) * sizeof(*dh));
	float *wh = malloc((size_t)(out * in) * sizeof(*wh));
	double num = 0, den = 0;
	int64_t i;

	for (i = 0; i < out * in; i++)
		d[i] = wq[i] - w[i];
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out,
		    (int)in, (int)in, 1, d, (int)in, h, (int)in, 0, dh, (int)in);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out,
		    (int)in, (int)in, 1, w, (int)in, h, (int)in, 0, wh, (int)in);
	for (i = 0; i < out * in; i++) {
		num += (double)dh[i] * d[i];
		den += (double)wh[i] * w[i];
	}
	free(d);
	free(dh);
	free(wh);
	return num / den;
}

static void gptq_compare(void)
{
	int64_t out = 1024, in = 1024, n = 4096, i, j;
	float *x = randn(n * in), *w = randn(out * in);
	float *h = calloc((size_t)(in * in), sizeof(*h));
	char why[256];
	size_t c;

	/* correlated inputs with a few outlier channels, like activations */
	for (i = 0; i < n; i++)
		for (j = 1; j < in; j++)
			x[i * in + j] = 0.6f * x[i * in + j - 1] +
					0.8f * x[i * in + j] *
					(j % 97 == 0 ? 20.0f : 1.0f);
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)in, (int)n,
		    1.0f, x, (int)in, 0.0f, h, (int)in);
	for (i = 0; i < in; i++)
		for (j = 0; j < i; j++)
			h[i * in + j] = h[j * in + i];
	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		const struct gptq_case *gc = &cases[c];
		int64_t ng = qf_ngroups(in, gc->group), same = 0, ssame = 0;
		struct gptq_run cpu, gpu;
		double ec, eg;

		CHECK(qf_backend_select("cpu", why, sizeof(why)), ==,
		      QF_BACKEND_CPU);
		gptq_once(w, h, out, in, gc, false, &cpu);
		CHECK(qf_backend_select("cuda", why, sizeof(why)), ==,
		      QF_BACKEND_CUDA);
		gptq_once(w, h, out, in, gc, false, &gpu);
		CHECK(cpu.ret, ==, 0);
		CHECK(gpu.ret, ==, 0);
		for (i = 0; i < out * in; i++)
			same += cpu.q[i] == gpu.q[i];
		for (i = 0; i < out * ng; i++)
			ssame += cpu.sc[i] == gpu.sc[i] && cpu.z[i] == gpu.z[i];
		CHECK(memcmp(cpu.g, gpu.g, (size_t)in * sizeof(*cpu.g)), ==, 0);
		ec = out_err(w, cpu.w, h, out, in);
		eg = out_err(w, gpu.w, h, out, in);
		printf("gptq %-32s codes equal %.5f, grids equal %.5f, "
		       "loss cpu %.6g cuda %.6g, output error cpu %.6g cuda "
		       "%.6g, %.3f s cpu, %.3f s cuda\n", gc->name,
		       (double)same / (double)(out * in),
		       (double)ssame / (double)(out * ng), cpu.loss, gpu.loss,
		       ec, eg, cpu.seconds, gpu.seconds);
		/* the documented tolerance (quantfs-variants(7) BACKENDS) */
		CHECK(same, >=, (int64_t)(0.99 * (double)(out * in)));
		CHECK(ssame, >=, (int64_t)(0.99 * (double)(out * ng)));
		CHECK(fabs(cpu.loss - gpu.loss), <=, 0.01 * cpu.loss);
		CHECK(fabs(ec - eg), <=, 0.01 * ec);
		run_free(&cpu);
		run_free(&gpu);
	}
	free(x);
	free(w);
	free(h);
}

/* Random W and X^T X of correlated inputs with outlier channels. */
static void problem(int64_t out, int64_t in, int64_t n, float **w, float **h)
{
	float *x = randn(n * in);
	int64_t i, j;

	*w = randn(out * in);
	*h = calloc((size_t)(in * in), sizeof(float));
	for (i = 0; i < n; i++)
		for (j = 1; j < in; j++)
			x[i * in + j] = 0.6f * x[i * in + j - 1] +
					0.8f * x[i * in + j] *
					(j % 97 == 0 ? 20.0f : 1.0f);
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)in, (int)n,
		    1.0f, x, (int)in, 0.0f, *h, (int)in);
	for (i = 0; i < in; i++)
		for (j = 0; j < i; j++)
			(*h)[i * in + j] = (*h)[j * in + i];
	free(x);
}

/*
 * The CUDA kernel's column loop (cuda.cu gptq_row, compiled for the host
 * too) against the CPU's: the same codes, grids and g_idx, bit for bit,
 * for every grid option.  Needs the module, not a device.
 */
static void kernel_code_on_host(void)
{
	int64_t out = 192, in = 512, i;
	float *w, *h;
	char why[256];
	size_t c;

	if (!qf_backend_cuda_built() || !qf_backend_cuda_ops(why, sizeof(why))) {
		printf("the CUDA module is not built or not loadable here: "
		       "kernel code checks skipped\n");
		return;
	}
	problem(out, in, 2048, &w, &h);
	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		const struct gptq_case *gc = &cases[c];
		int64_t ng = qf_ngroups(in, gc->group);
		struct gptq_run cpu, ker;

		gptq_once(w, h, out, in, gc, false, &cpu);
		gptq_once(w, h, out, in, gc, true, &ker);
		CHECK(cpu.ret, ==, 0);
		CHECK(ker.ret, ==, 0);
		CHECK(memcmp(cpu.q, ker.q, (size_t)(out * in)), ==, 0);
		CHECK(memcmp(cpu.sc, ker.sc, (size_t)(out * ng) * 2), ==, 0);
		CHECK(memcmp(cpu.z, ker.z, (size_t)(out * ng) * 4), ==, 0);
		CHECK(memcmp(cpu.g, ker.g, (size_t)in * 4), ==, 0);
		for (i = 0; i < out * in; i++)
			if (cpu.w[i] != ker.w[i])
				break;
		CHECK(i, ==, out * in);
		CHECK(fabs(cpu.loss - ker.loss) <= 1e-9 * cpu.loss, ==, 1);
		printf("kernel code on the host, %-32s identical to the CPU "
		       "(loss %.6g vs %.6g)\n", gc->name, cpu.loss, ker.loss);
		run_free(&cpu);
		run_free(&ker);
	}
	free(w);
	free(h);
}

int main(void)
{
	char why[256];
	int r;

	CHECK(qf_backend_select("tpu", why, sizeof(why)), ==, QF_ESPEC);
	CHECK(qf_backend_select("cpu", why, sizeof(why)), ==, QF_BACKEND_CPU);
	CHECK_STR(why, "");
	CHECK(qf_backend_current(), ==, QF_BACKEND_CPU);
	CHECK(gemm_check(), ==, 0);	/* the CPU path is cblas itself */
	CHECK(syrk_check() < 1e-6, ==, 1);
	kernel_code_on_host();
	r = qf_backend_select("cuda", why, sizeof(why));
	CHECK(r == QF_BACKEND_CPU || r == QF_BACKEND_CUDA, ==, 1);
	if (r == QF_BACKEND_CPU) {
		/* the fallback names its reason */
		CHECK(strlen(why) > 0, ==, 1);
		if (!qf_backend_cuda_built())
			CHECK(strstr(why, "built without") != NULL, ==, 1);
		printf("cuda backend not usable here (%s): device checks "
		       "skipped\n", why);
		CHECK(qf_backend_current(), ==, QF_BACKEND_CPU);
		return qf_check_exit();
	}
	{
		char dev[160];
		double g, s;

		qf_backend_describe(dev, sizeof(dev));
		printf("cuda backend: %s\n", dev);
		g = gemm_check();
		s = syrk_check();
		printf("sgemm cuBLAS vs OpenBLAS: relative difference %.3g\n",
		       g);
		printf("X^T X cuBLAS vs OpenBLAS: relative difference %.3g\n",
		       s);
		CHECK(g < 1e-5, ==, 1);
		CHECK(s < 1e-5, ==, 1);
	}
	gptq_compare();
	return qf_check_exit();
}
