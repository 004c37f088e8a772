/*
 * bench_forward.c - qf_tf_layer_forward throughput against plain SGEMM,
 * measured in the same run on one BLAS thread (PERF-NOTES: report ratios,
 * never absolute times across runs).
 *
 *   bench_forward [NSEQ [SEQLEN [LAYERS [THREADS]]]]  default 8 512 2 1
 *   bench_forward --model DIR [NSEQ [SEQLEN]]  default 4 512
 *
 * With --model, the decoder layers of a model directory of any computed
 * architecture (quantfs mkmodel --arch ... at a real model's shapes, see
 * bench/arch.py) run instead, loaded as the forward pass loads them; the
 * FLOPs are 2 m n k of every 2-D tensor of its layers (experts' scaled
 * by the share of experts a token uses) plus the causal attention blocks.
 *
 * Layers have Qwen3-0.6B shapes (hidden 1024, 16 heads of 128, 8 KV
 * heads, intermediate 3072, q/k norms) with random fp32 weights built in
 * memory.  FLOPs count 2 m n k for every GEMM that runs: the seven
 * linears and the attention products (QK^T and PV of the causal blocks
 * actually computed).  Elementwise work (norms, RoPE, softmax, SiLU) is
 * not counted but is inside the timed region.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "nn.h"
#include "tf_kernels.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static float frand(void)
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((double)(rng >> 11) * 0x1.0p-53) * 2 - 1;
}

static float *rand_mat(int64_t rows, int64_t cols, float scale, float bias)
{
	float *p = malloc(sizeof(float) * (size_t)(rows * cols));
	int64_t i;

	if (!p) {
		fprintf(stderr, "out of memory\n");
		abort();
	}
	for (i = 0; i < rows * cols; i++)
		p[i] = bias + scale * frand();
	return p;
}

static void layer_init(const struct qf_tf_config *c, struct qf_tf_layer *ly)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	const int64_t dims[QF_TF_NLINEAR][2] = {
		{ qd, c->hidden }, { kvd, c->hidden }, { kvd, c->hidden },
		{ c->hidden, qd }, { c->inter, c->hidden },
		{ c->inter, c->hidden }, { c->hidden, c->inter },
	};
	int i;

	for (i = 0; i < QF_TF_NLINEAR; i++) {
		/* uniform(-a, a) with variance 1 / in */
		float a = 1.7320508f / sqrtf((float)dims[i][1]);

		ly->w[i] = rand_mat(dims[i][0], dims[i][1], a, 0);
		ly->b[i] = NULL;
	}
	ly->in_norm = rand_mat(1, c->hidden, 0.1f, 1);
	ly->post_norm = rand_mat(1, c->hidden, 0.1f, 1);
	ly->q_norm = rand_mat(1, c->head_dim, 0.1f, 1);
	ly->k_norm = rand_mat(1, c->head_dim, 0.1f, 1);
}

static double linear_flops(const struct qf_tf_config *c, int64_t ntok)
{
	double qd = (double)c->heads * c->head_dim;
	double kvd = (double)c->kv_heads * c->head_dim;
	double per_tok = c->hidden * (qd + 2 * kvd) + qd * c->hidden +
			 3.0 * c->hidden * c->inter;

	return 2.0 * ntok * per_tok;
}

/* Seconds of a 4096 x 1024 x 3072 nn.Linear-style SGEMM (y = a b^T). */
static double sgemm_time(void)
{
	const int m = 4096, k = 1024, n = 3072;
	float *a = rand_mat(m, k, 1, 0);
	float *b = rand_mat(n, k, 1, 0);
	float *y = rand_mat(m, n, 1, 0);	/* touched: no page faults */
	double t;

	t = qf_now();
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a,
		    k, b, k, 0.0f, y, n);
	t = qf_now() - t;
	free(a);
	free(b);
	free(y);
	return t;
}

/*
 * Best of reps: the SGEMM above (*gbest) and the layers' forward (*best),
 * alternated so that both see the same machine state.  1 on failure.
 */
static int time_layers(const struct qf_tf_config *c, struct qf_tf_layer *ly,
		       float *x, int nseq, int seqlen, int reps, double *best,
		       double *gbest)
{
	double t;
	int l, r;

	sgemm_time();	/* warm up */
	for (r = 0; r < reps; r++) {
		t = sgemm_time();
		*gbest = t < *gbest ? t : *gbest;
		t = qf_now();
		for (l = 0; l < c->layers; l++)
			if (qf_tf_layer_forward(c, &ly[l], l, x, nseq, seqlen,
						NULL, NULL)) {
				fprintf(stderr, "layer forward failed\n");
				return 1;
			}
		t = qf_now() - t;
		*best = t < *best ? t : *best;
	}
	return 0;
}

/* num_experts_per_tok / expert count of config.json, 1 for dense. */
static double expert_share(const struct qf_model *m)
{
	long e = qf_model_cfg_int(m, "num_local_experts",
				  qf_model_cfg_int(m, "num_experts", 0));
	long k = qf_model_cfg_int(m, "num_experts_per_tok", 0);

	return e > 0 && k > 0 ? (double)k / (double)e : 1.0;
}

/* --model DIR: the model's own layers, timed against SGEMM. */
static int bench_model(const char *dir, int nseq, int seqlen)
{
	const double gemm_flops = 2.0 * 4096 * 1024 * 3072;
	struct qf_tf_config c;
	struct qf_tf_layer *ly;
	struct qf_model *m;
	double lin = 0, attn, best = 1e30, gbest = 1e30, share;
	int64_t ntok = (int64_t)nseq * seqlen;
	size_t i;
	float *x;
	int l, reps = 3;

	if (qf_model_open(dir, &m) || qf_tf_config_parse(m, &c)) {
		fprintf(stderr, "%s: not a model of a computed architecture\n",
			dir);
		return 1;
	}
	share = expert_share(m);
	for (i = 0; i < m->nt; i++) {
		const struct qf_st_tensor *st = m->t[i].t;

		if (st->ndim == 2 && !strncmp(m->t[i].name, "model.layers.", 13))
			lin += 2.0 * (double)ntok * (double)st->shape[0] *
			       (double)st->shape[1] *
			       (strstr(m->t[i].name, "experts.") ? share : 1);
	}
	ly = calloc((size_t)c.layers, sizeof(*ly));
	for (l = 0; l < c.layers; l++)
		if (qf_tf_layer_load(m, &c, l, &ly[l])) {
			fprintf(stderr, "layer %d does not load\n", l);
			return 1;
		}
	x = rand_mat(ntok, c.hidden, 1, 0);
	attn = c.layers * qf_tf_attention_flops(&c, nseq, seqlen, 0);
	if (time_layers(&c, ly, x, nseq, seqlen, reps, &best, &gbest))
		return 1;
	printf("model %s (%s): hidden %d, heads %d x %d, kv heads %d, "
	       "inter %d, %d layers, %d x %d tokens, 1 BLAS thread\n", dir,
	       c.model_type, c.hidden, c.heads, c.head_dim, c.kv_heads,
	       c.inter, c.layers, nseq, seqlen);
	printf("GFLOP: linears %.2f (experts x %.3f) + attention %.2f\n",
	       lin / 1e9, share, attn / 1e9);
	printf("sgemm 4096x1024x3072 (%s kernels): %.1f GFLOP/s; forward "
	       "%.1f GFLOP/s, %.0f tokens/s per layer\n", qf_blas_kernels(),
	       gemm_flops / gbest / 1e9,
	       (lin + attn) / best / 1e9, (double)ntok * c.layers / best);
	printf("ratio forward / sgemm: %.3f\n",
	       ((lin + attn) / best) / (gemm_flops / gbest));
	for (l = 0; l < c.layers; l++)
		qf_tf_layer_free(&ly[l]);
	free(ly);
	free(x);
	qf_model_close(m);
	return 0;
}

int main(int argc, char **argv)
{
	struct qf_tf_config c = {
		.model_type = "qwen3", .hidden = 1024, .inter = 3072,
		.heads = 16, .kv_heads = 8, .head_dim = 128, .vocab = 151936,
		.rms_eps = 1e-6f, .rope_theta = 1e6f, .qk_norm = true,
	};
	int nseq = argc > 1 ? atoi(argv[1]) : 8;
	int seqlen = argc > 2 ? atoi(argv[2]) : 512;
	int64_t ntok;
	struct qf_tf_layer *ly;
	const double gemm_flops = 2.0 * 4096 * 1024 * 3072;
	double flops, attn, best = 1e30, gbest = 1e30, tq;
	float *x, *q, *k, *v, *s;
	int l, r, reps = 3, nthr;

	qf_blas_fix_kernels(argv);	/* as quantfs runs */
	if (argc > 2 && !strcmp(argv[1], "--model")) {
		openblas_set_num_threads(1);
		return bench_model(argv[2], argc > 3 ? atoi(argv[3]) : 4,
				   argc > 4 ? atoi(argv[4]) : 512);
	}
	c.layers = argc > 3 ? atoi(argv[3]) : 2;
	nthr = argc > 4 ? atoi(argv[4]) : 1;
	if (nseq <= 0 || seqlen <= 0 || c.layers <= 0 || nthr <= 0) {
		fprintf(stderr, "usage: bench_forward [NSEQ [SEQLEN [LAYERS "
			"[THREADS]]]]\n");
		return 2;
	}
	openblas_set_num_threads(nthr);
	ntok = (int64_t)nseq * seqlen;
	ly = calloc((size_t)c.layers, sizeof(*ly));
	for (l = 0; l < c.layers; l++)
		layer_init(&c, &ly[l]);
	x = rand_mat(ntok, c.hidden, 1, 0);
	attn = qf_tf_attention_flops(&c, nseq, seqlen, 0);
	flops = c.layers * (linear_flops(&c, ntok) + attn);

	if (time_layers(&c, ly, x, nseq, seqlen, reps, &best, &gbest))
		return 1;
	/* attention alone, for the breakdown */
	q = rand_mat(ntok, (int64_t)c.heads * c.head_dim, 1, 0);
	k = rand_mat(ntok, (int64_t)c.kv_heads * c.head_dim, 1, 0);
	v = rand_mat(ntok, (int64_t)c.kv_heads * c.head_dim, 1, 0);
	s = malloc(sizeof(float) * QF_TF_BQ * (size_t)seqlen);
	tq = qf_now();
	qf_tf_attention(&c, q, k, v, nseq, seqlen, 0, s);
	tq = qf_now() - tq;

	printf("shapes: hidden %d, heads %d x %d, kv heads %d, inter %d, "
	       "%d layers, %d x %d tokens, %d BLAS thread(s)\n", c.hidden,
	       c.heads, c.head_dim, c.kv_heads, c.inter, c.layers, nseq,
	       seqlen, nthr);
	printf("GFLOP per layer: linears %.2f + attention %.2f (causal "
	       "blocks run)\n", linear_flops(&c, ntok) / 1e9, attn / 1e9);
	printf("sgemm 4096x1024x3072 (%s kernels): %.3f s, %.1f GFLOP/s "
	       "(best of %d)\n", qf_blas_kernels(), gbest, gemm_flops / gbest / 1e9, reps);
	printf("qf_tf_layer_forward: %.3f s for %d layers, %.1f GFLOP/s "
	       "(best of %d)\n", best, c.layers, flops / best / 1e9, reps);
	printf("  attention alone: %.3f s per layer, %.1f GFLOP/s\n", tq,
	       attn / tq / 1e9);
	printf("ratio forward / sgemm: %.3f\n",
	       (flops / best) / (gemm_flops / gbest));
	for (l = 0; l < c.layers; l++) {
		free(ly[l].in_norm);
		free(ly[l].post_norm);
		free(ly[l].q_norm);
		free(ly[l].k_norm);
		for (r = 0; r < QF_TF_NLINEAR; r++)
			free(ly[l].w[r]);
	}
	free(ly);
	free(x);
	free(q);
	free(k);
	free(v);
	free(s);
	return 0;
}
