/*
 * brecq_fixture.c - the layers and numbers test_brecq and test_brecq_grad
 * share (brecq_fixture.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "brecq_fixture.h"
#include "check.h"

static uint64_t rng = 0x5eed5eedULL;

double drand(void)	/* uniform [-1, 1) */
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(rng >> 11) * 0x1.0p-53 * 2 - 1;
}

void fill(float *p, int64_t n, double scale, double offset)
{
	int64_t i;

	for (i = 0; i < n; i++)
		p[i] = (float)(offset + scale * drand());
}

float *falloc(int64_t n)
{
	float *p = malloc(sizeof(float) * (size_t)n);

	QF_ASSERT(p);
	return p;
}

double *dalloc(int64_t n)
{
	double *p = malloc(sizeof(double) * (size_t)n);

	QF_ASSERT(p);
	return p;
}

double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *const var_name[] = {
	"llama", "qwen2 bias", "qwen3 qk_norm", "gemma",
};

void make_config(struct qf_tf_config *c, int hidden, int heads,
			int kv_heads, int hd, int inter, enum variant var)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->model_type, var == VAR_BIAS ? "qwen2" :
	       var == VAR_QKNORM ? "qwen3" : "llama");
	c->hidden = hidden;
	c->inter = inter;
	c->layers = 1;
	c->heads = heads;
	c->kv_heads = kv_heads;
	c->head_dim = hd;
	c->vocab = 512;
	c->rms_eps = 1e-6f;
	c->rope_theta = 10000.0f;
	c->attn_bias = var == VAR_BIAS;
	c->qk_norm = var == VAR_QKNORM || var == VAR_GEMMA;
	if (var != VAR_GEMMA)
		return;
	/* Gemma 3's q/k norms with Gemma 2's soft-cap, tight enough to
	 * bite, a query scale other than head_dim^-0.5 and a window */
	strcpy(c->model_type, "gemma3_text");
	c->sandwich = true;
	c->act = QF_ACT_GELU_TANH;
	c->attn_scale = 0.3f;
	c->attn_softcap = 1.5f;
	c->sliding_window = 4;
}

void lin_dims(const struct qf_tf_config *c, int l, int64_t *out,
		     int64_t *in)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	const int64_t d[QF_TF_NLINEAR][2] = {
		{ qd, c->hidden }, { kvd, c->hidden }, { kvd, c->hidden },
		{ c->hidden, qd }, { c->inter, c->hidden },
		{ c->inter, c->hidden }, { c->hidden, c->inter },
	};

	*out = d[l][0];
	*in = d[l][1];
}

/* Random weights ~ U(-a, a) with variance about 1 / in (q/k larger so
 * that the attention is far from uniform). */
void make_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly)
{
	int64_t out, in;
	int l;

	memset(ly, 0, sizeof(*ly));
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(c, l, &out, &in);
		ly->w[l] = falloc(out * in);
		fill(ly->w[l], out * in,
		     (l <= QF_TF_K ? 3.0 : 1.7) / sqrt((double)in), 0);
		if (c->attn_bias && l <= QF_TF_V) {
			ly->b[l] = falloc(out);
			fill(ly->b[l], out, 0.3, 0);
		}
	}
	ly->in_norm = falloc(c->hidden);
	ly->post_norm = falloc(c->hidden);
	fill(ly->in_norm, c->hidden, 0.2, 1);
	fill(ly->post_norm, c->hidden, 0.2, 1);
	if (c->qk_norm) {
		ly->q_norm = falloc(c->head_dim);
		ly->k_norm = falloc(c->head_dim);
		fill(ly->q_norm, c->head_dim, 0.2, 1.5);
		fill(ly->k_norm, c->head_dim, 0.2, 1.5);
	}
	if (c->sandwich) {
		ly->attn_out_norm = falloc(c->hidden);
		ly->mlp_out_norm = falloc(c->hidden);
		fill(ly->attn_out_norm, c->hidden, 0.2, 1);
		fill(ly->mlp_out_norm, c->hidden, 0.2, 1);
	}
}

void copy_layer(const struct qf_tf_config *c,
		       const struct qf_tf_layer *src, struct qf_tf_layer *dst)
{
	int64_t out, in;
	int l;

	memset(dst, 0, sizeof(*dst));
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(c, l, &out, &in);
		dst->w[l] = falloc(out * in);
		memcpy(dst->w[l], src->w[l],
		       sizeof(float) * (size_t)(out * in));
		if (src->b[l]) {
			dst->b[l] = falloc(out);
			memcpy(dst->b[l], src->b[l],
			       sizeof(float) * (size_t)out);
		}
	}
#define DUP(f, n)                                                            \
	do {                                                                 \
		if (src->f) {                                                \
			dst->f = falloc(n);                                  \
			memcpy(dst->f, src->f, sizeof(float) * (size_t)(n)); \
		}                                                            \
	} while (0)
	DUP(in_norm, c->hidden);
	DUP(post_norm, c->hidden);
	DUP(q_norm, c->head_dim);
	DUP(k_norm, c->head_dim);
	DUP(attn_out_norm, c->hidden);
	DUP(mlp_out_norm, c->hidden);
#undef DUP
}

double dot_f(const float *a, const float *b, int64_t n)
{
	double s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}
