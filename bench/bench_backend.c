/*
 * bench_backend.c - one decoder layer of GPTQ production, phase by
 * phase, on the CPU and on the CUDA backend in the same run: the
 * calibration forward's linear products, X^T X of the four distinct
 * inputs, and GPTQ (Cholesky, column loop, lazy updates) of the seven
 * linears.  Shapes default to Qwen3-0.6B's (hidden 1024, q 2048, kv 1024,
 * intermediate 3072) with 128 x 512 calibration tokens.  Prints seconds
 * per phase, the CPU/CUDA ratio, and how many GPTQ codes agree.
 *
 * usage: bench_backend [tokens [hidden inter qdim kvdim]]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

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
};

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
	int b, i, be;

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
			return 0;
		}
		qf_backend_describe(dev, sizeof(dev));
		printf("%s: %s\n", b ? "cuda" : "cpu", dev);
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
			free(wc);
			free(hc);
			free(sc);
			free(z);
			free(g);
		}
		ph[b].total = qf_now() - t1;
	}
	printf("one decoder layer, %lld calibration tokens, hidden %lld, "
	       "intermediate %lld\n", (long long)ntok, (long long)hid,
	       (long long)inter);
	printf("%-28s %10s %10s %8s\n", "phase", "cpu s", "cuda s",
	       "cpu/cuda");
#define ROW(n, f)                                                          \
	printf("%-28s %10.3f %10.3f %8.1f\n", n, ph[0].f, ph[1].f,         \
	       ph[1].f > 0 ? ph[0].f / ph[1].f : 0)
	ROW("linear products (forward)", fwd);
	ROW("X^T X (4 inputs)", hess);
	ROW("GPTQ Cholesky + inverse", chol);
	ROW("GPTQ column loop", cols);
	ROW("GPTQ lazy updates", lazy);
	ROW("all of the above", total);
	for (i = 0; i < 7; i++) {
		int64_t n = lins[i].out * lins[i].in, same = 0, k;

		for (k = 0; k < n; k++)
			same += qres[0][i][k] == qres[1][i][k];
		printf("%-10s codes equal cpu/cuda: %.5f\n", lins[i].name,
		       (double)same / (double)n);
	}
	return 0;
}
