/*
 * bench_backend.c - one decoder layer of GPTQ production, phase by
 * phase, on the CPU and on the CUDA backend in the same run: the
 * calibration forward's linear products, X^T X of the four distinct
 * inputs, and GPTQ (Cholesky, column loop, lazy updates) of the seven
 * linears; then, on the CPU, packing the codes into GPTQ qweight and
 * committing them to an LMDB cache in a temporary directory, as the mount
 * does per layer.  Shapes default to Qwen3-0.6B's (hidden 1024, q 2048,
 * kv 1024, intermediate 3072) with 128 x 512 calibration tokens.  Prints
 * per phase: seconds, floating-point work and its rate as a fraction of
 * an SGEMM measured in the same run on the same backend (packing and the
 * commit: bytes per second as a fraction of memcpy), the CPU/CUDA ratio,
 * and how many GPTQ codes agree.
 *
 * usage: bench_backend [tokens [hidden inter qdim kvdim]]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "method.h"

static uint64_t rng = 88172645463325252ull;

static float gauss(void)
{
	double u, v;

	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	u = (double)(rng >> 11) / 9007199254740992.0 + 1e-12;
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	v = (double)(rng >> 11) / 9007199254740992.0;
	return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static float *randn(int64_t n, float s)
{
	float *x = malloc((size_t)n * sizeof(*x));
	int64_t i;

	if (!x) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	for (i = 0; i < n; i++)
		x[i] = s * gauss();
	return x;
}

struct lin {
	const char *name;
	int64_t out, in;
	int input;			/* which of the 4 inputs */
};

struct phase {
	double fwd, hess, chol, cols, lazy, total;
	double sgemm;			/* GFLOP/s of the reference product */
};

/* GFLOP/s of an [m x k] x [k x n] product like the forward's largest. */
static double sgemm_rate(int64_t m, int64_t n, int64_t k, const float *a,
			 const float *b, float *c)
{
	double best = 0;
	int r;

	for (r = 0; r < 3; r++) {
		double t0 = qf_now(), dt;

		qf_sgemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n);
		dt = qf_now() - t0;
		if (2.0 * m * n * k / dt / 1e9 > best)
			best = 2.0 * m * n * k / dt / 1e9;
	}
	return best;
}

/* Bytes per second of memcpy over len bytes (best of 3). */
static double memcpy_rate(size_t len)
{
	char *a = malloc(len), *b = malloc(len);
	double best = 0;
	int r;

	memset(a, 1, len);
	memset(b, 2, len);
	for (r = 0; r < 3; r++) {
		double t0 = qf_now(), dt;

		memcpy(b, a, len);
		dt = qf_now() - t0;
		if (len / dt > best)
			best = len / dt;
	}
	free(a);
	free(b);
	return best;
}

/*
 * Pack the seven linears' 4-bit codes as the mount does and commit them
 * to a fresh LMDB cache in one transaction (one layer), synced.
 */
static void pack_and_commit(const struct lin *lins, uint8_t *const *q,
			    double *pack_s, double *commit_s, size_t *bytes)
{
	char dir[] = "/tmp/qfbench.XXXXXX";
	struct qf_cache_item it[7];
	uint32_t *qw[7];
	uint8_t vid[QF_CACHE_VID] = { 1 };
	struct qf_cache *c;
	double t0;
	int i;

	*bytes = 0;
	t0 = qf_now();
	for (i = 0; i < 7; i++) {
		size_t n = (size_t)(lins[i].in * lins[i].out) / 2;

		qw[i] = malloc(n);
		qf_gptq_pack_qweight(q[i], lins[i].out, lins[i].in, 4, qw[i]);
		it[i].name = lins[i].name;
		it[i].data = qw[i];
		it[i].len = n;
		*bytes += n;
	}
	*pack_s = qf_now() - t0;
	*commit_s = 0;
	if (mkdtemp(dir) && qf_cache_open(dir, 1ull << 30, &c) == 0) {
		t0 = qf_now();
		if (qf_cache_put(c, vid, it, 7) == 0 && qf_cache_sync(c) == 0)
			*commit_s = qf_now() - t0;
		qf_cache_close(c);
	}
	for (i = 0; i < 2; i++) {
		char path[64];

		snprintf(path, sizeof(path), "%s/%s", dir,
			 i ? "lock.mdb" : "data.mdb");
		unlink(path);
	}
	rmdir(dir);
	for (i = 0; i < 7; i++)
		free(qw[i]);
}

int main(int argc, char **argv)
{
	int64_t ntok = argc > 1 ? atoll(argv[1]) : 128 * 512;
	int64_t hid = argc > 5 ? atoll(argv[2]) : 1024;
	int64_t inter = argc > 5 ? atoll(argv[3]) : 3072;
	int64_t qd = argc > 5 ? atoll(argv[4]) : 2048;
	int64_t kvd = argc > 5 ? atoll(argv[5]) : 1024;
	struct lin lins[7] = {
		{ "q_proj", qd, hid, 0 }, { "k_proj", kvd, hid, 0 },
		{ "v_proj", kvd, hid, 0 }, { "o_proj", hid, qd, 1 },
		{ "gate_proj", inter, hid, 2 }, { "up_proj", inter, hid, 2 },
		{ "down_proj", hid, inter, 3 },
	};
	int64_t ins[4] = { hid, qd, hid, inter };
	float *x[4], *h[4], *w[7], *y;
	uint8_t *qres[2][7];
	struct phase ph[2];
	char why[256], dev[160];
	double fl_fwd = 0, fl_hess = 0, fl_chol = 0, fl_cols = 0, fl_lazy = 0;
	double pack_s, commit_s, mrate;
	size_t packed;
	int b, i, be, nb = 2;

	qf_blas_fix_kernels(argv);	/* as quantfs runs */
	for (i = 0; i < 4; i++) {
		int64_t r, j;

		x[i] = randn(ntok * ins[i], 1.0f);
		for (r = 0; r < ntok; r++)	/* correlated channels */
			for (j = 1; j < ins[i]; j++)
				x[i][r * ins[i] + j] = 0.6f * x[i][r * ins[i] + j - 1] +
						       0.8f * x[i][r * ins[i] + j];
		h[i] = malloc((size_t)(ins[i] * ins[i]) * sizeof(float));
	}
	for (i = 0; i < 7; i++)
		w[i] = randn(lins[i].out * lins[i].in, 0.02f);
	y = malloc((size_t)(ntok * inter) * sizeof(float));
	memset(ph, 0, sizeof(ph));
	for (b = 0; b < 2; b++) {
		double t0, t1;

		be = qf_backend_select(b ? "cuda" : "cpu", why, sizeof(why));
		if (b && be != QF_BACKEND_CUDA) {
			printf("cuda backend not usable: %s\n", why);
			nb = 1;
			break;
		}
		qf_backend_describe(dev, sizeof(dev));
		printf("%s: %s\n", b ? "cuda" : "cpu", dev);
		ph[b].sgemm = sgemm_rate(ntok, inter, hid, x[0], w[4], y);
		t1 = qf_now();
		t0 = qf_now();
		for (i = 0; i < 7; i++)
			qf_sgemm(false, true, ntok, lins[i].out, lins[i].in, 1,
				 x[lins[i].input], lins[i].in, w[i], lins[i].in,
				 0, y, lins[i].out);
		ph[b].fwd = qf_now() - t0;
		t0 = qf_now();
		for (i = 0; i < 4; i++) {
			if (i == 2)
				continue;	/* gate/up share q/k/v's shape */
			memset(h[i], 0, (size_t)(ins[i] * ins[i]) * 4);
			qf_ssyrk_t(ins[i], ntok, x[i], ins[i], h[i]);
		}
		ph[b].hess = qf_now() - t0;
		for (i = 0; i < 4; i++) {	/* mirror */
			int64_t r, c, n = ins[i == 2 ? 0 : i];
			float *hh = h[i == 2 ? 0 : i];

			if (i == 2)
				continue;
			for (r = 0; r < n; r++)
				for (c = 0; c < r; c++)
					hh[r * n + c] = hh[c * n + r];
		}
		for (i = 0; i < 7; i++) {
			struct qf_gptq_times gt = { 0 };
			struct qf_gptq_opts o = { .qp = { 4, 128, false },
						  .times = &gt };
			int64_t in = lins[i].in, out = lins[i].out;
			int64_t ng = qf_ngroups(in, 128);
			int hi = lins[i].input == 2 ? 0 : lins[i].input;
			float *wc = malloc((size_t)(out * in) * 4);
			float *hc = malloc((size_t)(in * in) * 4);
			uint16_t *sc = malloc((size_t)(out * ng) * 2);
			int32_t *z = malloc((size_t)(out * ng) * 4);
			int32_t *g = malloc((size_t)in * 4);
			double loss;
			int ret;

			qres[b][i] = malloc((size_t)(out * in));
			memcpy(wc, w[i], (size_t)(out * in) * 4);
			memcpy(hc, h[hi], (size_t)(in * in) * 4);
			ret = qf_gptq_quantize(wc, out, in, hc, &o, qres[b][i],
					       sc, z, g, &loss);
			if (ret)
				printf("%s: gptq failed: %d\n", lins[i].name, ret);
			ph[b].chol += gt.chol;
			ph[b].cols += gt.columns;
			ph[b].lazy += gt.lazy;
			if (!b) {
				fl_lazy += gt.lazy_flop;
				/* potrf, inverse, potrf: n^3 / 3 + 2 n^3 / 3
				 * + n^3 / 3; the loop: out x 128^2 / 2
				 * multiply-adds per block of 128 columns */
				fl_chol += 4.0 / 3 * in * in * (double)in;
				fl_cols += (double)out * in * 128;
			}
			free(wc);
			free(hc);
			free(sc);
			free(z);
			free(g);
		}
		ph[b].total = qf_now() - t1;
	}
	for (i = 0; i < 7; i++)
		fl_fwd += 2.0 * ntok * lins[i].out * lins[i].in;
	for (i = 0; i < 4; i++)
		if (i != 2)
			fl_hess += (double)ntok * ins[i] * ins[i];
	pack_and_commit(lins, qres[0], &pack_s, &commit_s, &packed);
	mrate = memcpy_rate(packed);
	printf("one decoder layer, %lld calibration tokens, hidden %lld, "
	       "intermediate %lld; SGEMM %lldx%lldx%lld: cpu %.1f GFLOP/s",
	       (long long)ntok, (long long)hid, (long long)inter,
	       (long long)ntok, (long long)inter, (long long)hid, ph[0].sgemm);
	if (nb > 1)
		printf(", cuda %.1f GFLOP/s", ph[1].sgemm);
	printf("\n%-28s %9s %8s %9s %7s %9s %8s\n", "phase", "cpu s", "GFLOP",
	       "GFLOP/s", "xSGEMM", "cuda s", "cpu/cuda");
#define ROW(n, f, fl)                                                      \
	printf("%-28s %9.3f %8.1f %9.1f %7.2f %9.3f %8.1f\n", n, ph[0].f,    \
	       (fl) / 1e9, (fl) / ph[0].f / 1e9,                          \
	       (fl) / ph[0].f / 1e9 / ph[0].sgemm, ph[1].f,                \
	       ph[1].f > 0 ? ph[0].f / ph[1].f : 0)
	ROW("linear products (forward)", fwd, fl_fwd);
	ROW("X^T X (distinct inputs)", hess, fl_hess);
	ROW("GPTQ Cholesky + inverse", chol, fl_chol);
	ROW("GPTQ column loop", cols, fl_cols);
	ROW("GPTQ lazy updates", lazy, fl_lazy);
	ROW("all of the above", total, fl_fwd + fl_hess + fl_chol + fl_cols +
	    fl_lazy);
	printf("%-28s %9.3f %8.1f MB, %.0f MB/s = %.2fx memcpy (%.0f MB/s)\n",
	       "packing (qweight, 4-bit)", pack_s, packed / 1e6,
	       packed / pack_s / 1e6, packed / pack_s / mrate, mrate / 1e6);
	if (commit_s > 0)
		printf("%-28s %9.3f %8.1f MB, %.0f MB/s = %.3fx memcpy, synced\n",
		       "LMDB commit (one layer)", commit_s, packed / 1e6,
		       packed / commit_s / 1e6, packed / commit_s / mrate);
	if (nb < 2)
		return 0;
	for (i = 0; i < 7; i++) {
		int64_t n = lins[i].out * lins[i].in, same = 0, k;

		for (k = 0; k < n; k++)
			same += qres[0][i][k] == qres[1][i][k];
		printf("%-10s codes equal cpu/cuda: %.5f\n", lins[i].name,
		       (double)same / (double)n);
	}
	return 0;
}
