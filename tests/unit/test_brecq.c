/*
 * test_brecq.c - BRECQ's pieces: the block forward with saved activations
 * against qf_tf_layer_forward; every weight gradient of the hand-written
 * block backward against central finite differences, (a) of a plain
 * double-precision reference block written here and (b) of the float
 * forward itself, for llama, q/k/v bias (qwen2) and q/k norm (qwen3);
 * each sub-op's backward (rmsnorm, rope, attention, swiglu) likewise;
 * AdaRound's soft/hard rounding and its V gradient; reconstruction
 * lowering the held-out block MSE below RTN on the same grid; determinism;
 * and the seconds per step at the 5M-parameter model's shapes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "brecq.h"
#include "check.h"
#include "tf_backward.h"
#include "tf_kernels.h"

static uint64_t rng = 0x5eed5eedULL;

static double drand(void)	/* uniform [-1, 1) */
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(rng >> 11) * 0x1.0p-53 * 2 - 1;
}

static void fill(float *p, int64_t n, double scale, double offset)
{
	int64_t i;

	for (i = 0; i < n; i++)
		p[i] = (float)(offset + scale * drand());
}

static float *falloc(int64_t n)
{
	float *p = malloc(sizeof(float) * (size_t)n);

	QF_ASSERT(p);
	return p;
}

static double *dalloc(int64_t n)
{
	double *p = malloc(sizeof(double) * (size_t)n);

	QF_ASSERT(p);
	return p;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum variant { VAR_LLAMA, VAR_BIAS, VAR_QKNORM, VAR_GEMMA };
static const char *const var_name[] = {
	"llama", "qwen2 bias", "qwen3 qk_norm", "gemma",
};

static void make_config(struct qf_tf_config *c, int hidden, int heads,
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

static void lin_dims(const struct qf_tf_config *c, int l, int64_t *out,
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
static void make_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly)
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

static void copy_layer(const struct qf_tf_config *c,
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

/* ------------------------------------------------------------------ */
/* the double-precision reference block                               */

struct dlayer {
	double *w[QF_TF_NLINEAR];
	double *b[QF_TF_NLINEAR];
	double *in_norm;
	double *post_norm;
	double *q_norm;
	double *k_norm;
	double *attn_out_norm;
	double *mlp_out_norm;
};

static double *to_d(const float *p, int64_t n)
{
	double *d;
	int64_t i;

	if (!p)
		return NULL;
	d = dalloc(n);
	for (i = 0; i < n; i++)
		d[i] = p[i];
	return d;
}

static void dlayer_init(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, struct dlayer *dl)
{
	int64_t out, in;
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(c, l, &out, &in);
		dl->w[l] = to_d(ly->w[l], out * in);
		dl->b[l] = to_d(ly->b[l], out);
	}
	dl->in_norm = to_d(ly->in_norm, c->hidden);
	dl->post_norm = to_d(ly->post_norm, c->hidden);
	dl->q_norm = to_d(ly->q_norm, c->head_dim);
	dl->k_norm = to_d(ly->k_norm, c->head_dim);
	dl->attn_out_norm = to_d(ly->attn_out_norm, c->hidden);
	dl->mlp_out_norm = to_d(ly->mlp_out_norm, c->hidden);
}

static void dlayer_free(struct dlayer *dl)
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		free(dl->w[l]);
		free(dl->b[l]);
	}
	free(dl->in_norm);
	free(dl->post_norm);
	free(dl->q_norm);
	free(dl->k_norm);
	free(dl->attn_out_norm);
	free(dl->mlp_out_norm);
}

static void d_rmsnorm(const double *x, const double *w, int64_t n, int d,
		      double eps, double *y)
{
	int64_t i;
	int j;

	for (i = 0; i < n; i++) {
		double ss = 0, r;

		for (j = 0; j < d; j++)
			ss += x[i * d + j] * x[i * d + j];
		r = 1 / sqrt(ss / d + eps);
		for (j = 0; j < d; j++)
			y[i * d + j] = x[i * d + j] * r * w[j];
	}
}

static void d_linear(const double *x, int64_t n, int64_t in, const double *w,
		     const double *b, int64_t out, double *y)
{
	int64_t i, o, j;

	for (i = 0; i < n; i++)
		for (o = 0; o < out; o++) {
			double acc = b ? b[o] : 0;

			for (j = 0; j < in; j++)
				acc += x[i * in + j] * w[o * in + j];
			y[i * out + o] = acc;
		}
}

static void d_rope(double *x, int64_t ntok, int nh, int hd, int seqlen,
		   double theta)
{
	int half = hd / 2;
	int64_t t;
	int h, i;

	for (t = 0; t < ntok; t++)
		for (h = 0; h < nh; h++)
			for (i = 0; i < half; i++) {
				double a = (double)(t % seqlen) *
					   pow(theta, -2.0 * i / hd);
				double *xh = x + (t * nh + h) * hd;
				double x1 = xh[i], x2 = xh[i + half];

				xh[i] = x1 * cos(a) - x2 * sin(a);
				xh[i + half] = x2 * cos(a) + x1 * sin(a);
			}
}

static void d_attention(const struct qf_tf_config *c, const double *q,
			const double *k, const double *v, int nseq,
			int seqlen, int window, double *o)
{
	int hd = c->head_dim, qd = c->heads * hd, kvd = c->kv_heads * hd;
	int rep = c->heads / c->kv_heads;
	double *p = dalloc(seqlen);
	int sq, h, i, j, e;

	for (sq = 0; sq < nseq; sq++)
		for (h = 0; h < c->heads; h++)
			for (i = 0; i < seqlen; i++) {
				int64_t ti = (int64_t)sq * seqlen + i;
				const double *qi = q + ti * qd + h * hd;
				double *oi = o + ti * qd + h * hd;
				int j0 = window > 0 && i - window + 1 > 0 ?
					 i - window + 1 : 0;
				double mx = -INFINITY, sum = 0;

				for (j = j0; j <= i; j++) {
					int64_t tj = ti - i + j;
					const double *kj = k + tj * kvd +
							   (h / rep) * hd;
					double s = 0;

					for (e = 0; e < hd; e++)
						s += qi[e] * kj[e];
					p[j] = c->attn_scale > 0 ?
					       s * c->attn_scale :
					       s / sqrt((double)hd);
					if (c->attn_softcap > 0)
						p[j] = c->attn_softcap *
						       tanh(p[j] / c->attn_softcap);
					mx = p[j] > mx ? p[j] : mx;
				}
				for (j = j0; j <= i; j++) {
					p[j] = exp(p[j] - mx);
					sum += p[j];
				}
				for (e = 0; e < hd; e++)
					oi[e] = 0;
				for (j = j0; j <= i; j++) {
					int64_t tj = ti - i + j;
					const double *vj = v + tj * kvd +
							   (h / rep) * hd;

					for (e = 0; e < hd; e++)
						oi[e] += p[j] / sum * vj[e];
				}
			}
	free(p);
}

static double d_silu(double g)
{
	return g / (1 + exp(-g));
}

static double d_gelu_tanh(double g)
{
	return 0.5 * g * (1 + tanh(sqrt(2 / M_PI) *
				   (g + 0.044715 * g * g * g)));
}

/* y += x, through norm w (gemma's sandwich) when w is not NULL. */
static void d_add_normed(double *y, double *x, const double *w, int64_t T,
			 int H, double eps)
{
	int64_t i;

	if (w)
		d_rmsnorm(x, w, T, H, eps, x);
	for (i = 0; i < T * H; i++)
		y[i] += x[i];
}

/* y = block(x) in double, straight from the definitions. */
static void d_block(const struct qf_tf_config *c, const struct dlayer *dl,
		    const double *x, double *y, int nseq, int seqlen)
{
	int64_t T = (int64_t)nseq * seqlen, H = c->hidden, I = c->inter;
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	double *xn = dalloc(T * H), *q = dalloc(T * qd), *k = dalloc(T * kvd);
	double *v = dalloc(T * kvd), *o = dalloc(T * qd), *h1 = dalloc(T * H);
	double *g = dalloc(T * I), *u = dalloc(T * I);
	int64_t i;

	d_rmsnorm(x, dl->in_norm, T, (int)H, c->rms_eps, xn);
	d_linear(xn, T, H, dl->w[QF_TF_Q], dl->b[QF_TF_Q], qd, q);
	d_linear(xn, T, H, dl->w[QF_TF_K], dl->b[QF_TF_K], kvd, k);
	d_linear(xn, T, H, dl->w[QF_TF_V], dl->b[QF_TF_V], kvd, v);
	if (dl->q_norm) {
		d_rmsnorm(q, dl->q_norm, T * c->heads, c->head_dim,
			  c->rms_eps, q);
		d_rmsnorm(k, dl->k_norm, T * c->kv_heads, c->head_dim,
			  c->rms_eps, k);
	}
	d_rope(q, T, c->heads, c->head_dim, seqlen, c->rope_theta);
	d_rope(k, T, c->kv_heads, c->head_dim, seqlen, c->rope_theta);
	d_attention(c, q, k, v, nseq, seqlen,
		    c->sliding_window < seqlen ? c->sliding_window : 0, o);
	d_linear(o, T, qd, dl->w[QF_TF_O], dl->b[QF_TF_O], H, xn);
	memcpy(h1, x, sizeof(double) * (size_t)(T * H));
	d_add_normed(h1, xn, dl->attn_out_norm, T, (int)H, c->rms_eps);
	d_rmsnorm(h1, dl->post_norm, T, (int)H, c->rms_eps, xn);
	d_linear(xn, T, H, dl->w[QF_TF_GATE], dl->b[QF_TF_GATE], I, g);
	d_linear(xn, T, H, dl->w[QF_TF_UP], dl->b[QF_TF_UP], I, u);
	for (i = 0; i < T * I; i++)
		g[i] = (c->act == QF_ACT_GELU_TANH ? d_gelu_tanh(g[i]) :
			d_silu(g[i])) * u[i];
	d_linear(g, T, I, dl->w[QF_TF_DOWN], dl->b[QF_TF_DOWN], H, xn);
	memcpy(y, h1, sizeof(double) * (size_t)(T * H));
	d_add_normed(y, xn, dl->mlp_out_norm, T, (int)H, c->rms_eps);
	free(xn); free(q); free(k); free(v); free(o); free(h1); free(g);
	free(u);
}

static double dot_d(const double *a, const float *b, int64_t n)
{
	double s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static double dot_f(const float *a, const float *b, int64_t n)
{
	double s = 0;
	int64_t i;

	for (i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

/* Relative error max |a - fd| / max |fd| of one gradient. */
static double rel_err(const float *a, const double *fd, int64_t n)
{
	double e = 0, m = 0;
	int64_t i;

	for (i = 0; i < n; i++) {
		e = fmax(e, fabs(a[i] - fd[i]));
		m = fmax(m, fabs(fd[i]));
	}
	return m > 0 ? e / m : e;
}

/* ------------------------------------------------------------------ */
/* block gradients                                                    */

#define GS_NSEQ 2
#define GS_LEN 7

static void test_block_grad(enum variant var)
{
	struct qf_tf_config c;
	struct qf_tf_layer ly;
	struct qf_tf_saved sv;
	struct dlayer dl = { 0 };
	int64_t T = GS_NSEQ * GS_LEN, n, out, in, i, j;
	float *x, *y, *y2, *r, *dw[QF_TF_NLINEAR];
	double *xd, *yd, *fd, emax_d = 0, emax_f = 0, fwd = 0, fwd2 = 0;
	int l;

	make_config(&c, 16, 4, 2, 4, 24, var);
	make_layer(&c, &ly);
	n = T * c.hidden;
	x = falloc(n); y = falloc(n); y2 = falloc(n); r = falloc(n);
	fill(x, n, 1.5, 0);
	fill(r, n, 1, 0);
	xd = to_d(x, n);
	yd = dalloc(n);
	CHECK(qf_tf_saved_init(&c, GS_NSEQ, GS_LEN, &sv), ==, 0);

	/* the forward agrees with qf_tf_layer_forward and the reference */
	qf_tf_block_forward(&c, &ly, x, y, &sv);
	memcpy(y2, x, sizeof(float) * (size_t)n);
	CHECK(qf_tf_layer_forward(&c, &ly, 0, y2, GS_NSEQ, GS_LEN, NULL,
				  NULL), ==, 0);
	dlayer_init(&c, &ly, &dl);
	d_block(&c, &dl, xd, yd, GS_NSEQ, GS_LEN);
	for (i = 0; i < n; i++) {
		fwd2 = fmax(fwd2, fabs(y[i] - y2[i]));
		fwd = fmax(fwd, fabs(y[i] - yd[i]));
	}
	CHECK(fwd2 < 1e-5, ==, 1);
	CHECK(fwd < 1e-4, ==, 1);

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&c, l, &out, &in);
		dw[l] = falloc(out * in);
	}
	qf_tf_block_backward(&c, &ly, &sv, r, dw);

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		double ed, ef;

		lin_dims(&c, l, &out, &in);
		fd = dalloc(out * in);
		/* (a) double reference, eps 1e-4 */
		for (j = 0; j < out * in; j++) {
			double w0 = dl.w[l][j], lp, lm;

			dl.w[l][j] = w0 + 1e-4;
			d_block(&c, &dl, xd, yd, GS_NSEQ, GS_LEN);
			lp = dot_d(yd, r, n);
			dl.w[l][j] = w0 - 1e-4;
			d_block(&c, &dl, xd, yd, GS_NSEQ, GS_LEN);
			lm = dot_d(yd, r, n);
			dl.w[l][j] = w0;
			fd[j] = (lp - lm) / 2e-4;
		}
		ed = rel_err(dw[l], fd, out * in);
		/* (b) the float forward itself, eps 1e-3 */
		for (j = 0; j < out * in; j++) {
			float w0 = ly.w[l][j];
			double lp, lm, h;

			ly.w[l][j] = w0 + 1e-3f;
			h = (double)ly.w[l][j] - w0;
			qf_tf_block_forward(&c, &ly, x, y, &sv);
			lp = dot_f(y, r, n);
			ly.w[l][j] = w0 - 1e-3f;
			h += w0 - (double)ly.w[l][j];
			qf_tf_block_forward(&c, &ly, x, y, &sv);
			lm = dot_f(y, r, n);
			ly.w[l][j] = w0;
			fd[j] = (lp - lm) / h;
		}
		ef = rel_err(dw[l], fd, out * in);
		emax_d = fmax(emax_d, ed);
		emax_f = fmax(emax_f, ef);
		if (ed > 1e-3 || ef > 1e-2)
			fprintf(stderr, "%s %s: rel err %.3g (double fd), "
				"%.3g (float fd)\n", var_name[var],
				qf_tf_linear_name(l), ed, ef);
		CHECK(ed < 1e-3, ==, 1);
		CHECK(ef < 1e-2, ==, 1);
		free(fd);
	}
	printf("block %-13s: forward max |diff| %.2g vs "
	       "qf_tf_layer_forward, %.2g vs double ref; backward max rel "
	       "err %.2e (double fd, eps 1e-4), %.2e (float fd, eps 1e-3)\n",
	       var_name[var], fwd2, fwd, emax_d, emax_f);
	for (l = 0; l < QF_TF_NLINEAR; l++)
		free(dw[l]);
	dlayer_free(&dl);
	qf_tf_saved_free(&sv);
	qf_tf_layer_free(&ly);
	free(x); free(y); free(y2); free(r); free(xd); free(yd);
}

/* ------------------------------------------------------------------ */
/* sub-ops                                                            */

static void test_rmsnorm_grad(void)
{
	const int n = 5, d = 12;
	float x[60], w[12], dy[60], dx[60];
	double xd[60], wd[12], yd[60], fd[60];
	int i;

	fill(x, n * d, 2, 0);
	fill(w, d, 0.5, 1);
	fill(dy, n * d, 1, 0);
	for (i = 0; i < d; i++)
		wd[i] = w[i];
	for (i = 0; i < n * d; i++)
		xd[i] = x[i];
	qf_tf_rmsnorm_bwd(x, w, n, d, 1e-6f, dy, dx);
	for (i = 0; i < n * d; i++) {
		double x0 = xd[i], lp, lm;

		xd[i] = x0 + 1e-4;
		d_rmsnorm(xd, wd, n, d, 1e-6, yd);
		lp = dot_d(yd, dy, n * d);
		xd[i] = x0 - 1e-4;
		d_rmsnorm(xd, wd, n, d, 1e-6, yd);
		lm = dot_d(yd, dy, n * d);
		xd[i] = x0;
		fd[i] = (lp - lm) / 2e-4;
	}
	printf("rmsnorm backward: max rel err %.2e\n", rel_err(dx, fd, n * d));
	CHECK(rel_err(dx, fd, n * d) < 1e-4, ==, 1);
	/* in place (dx == dy) gives the same */
	qf_tf_rmsnorm_bwd(x, w, n, d, 1e-6f, dy, dy);
	CHECK(memcmp(dx, dy, sizeof(dx)), ==, 0);
}

static void test_rope_grad(void)
{
	struct qf_tf_config c;
	const int ntok = 14, nh = 3, hd = 8, seqlen = 7;
	float x[14 * 3 * 8], dx[14 * 3 * 8], cs[7 * 4], sn[7 * 4];
	double xd[14 * 3 * 8], fd[14 * 3 * 8];
	const int n = ntok * nh * hd;
	int i;

	make_config(&c, 24, 3, 3, hd, 8, VAR_LLAMA);
	qf_tf_rope_table(&c, seqlen, cs, sn);
	fill(x, n, 1, 0);	/* dy, kept */
	memcpy(dx, x, sizeof(x));
	qf_tf_rope_bwd(dx, ntok, nh, hd, seqlen, cs, sn);
	for (i = 0; i < n; i++) {
		double lp, lm;

		memset(xd, 0, sizeof(xd));
		xd[i] = 1e-3;
		d_rope(xd, ntok, nh, hd, seqlen, c.rope_theta);
		lp = dot_d(xd, x, n);
		memset(xd, 0, sizeof(xd));
		xd[i] = -1e-3;
		d_rope(xd, ntok, nh, hd, seqlen, c.rope_theta);
		lm = dot_d(xd, x, n);
		fd[i] = (lp - lm) / 2e-3;
	}
	printf("rope backward: max rel err %.2e\n", rel_err(dx, fd, n));
	CHECK(rel_err(dx, fd, n) < 1e-5, ==, 1);
}

/*
 * Attention: nseq sequences of seqlen with a window; all elements when
 * stride is 1, else every stride-th element (long sequences, several
 * query blocks).
 */
static void attn_grad_case(int nseq, int seqlen, int window, int stride)
{
	struct qf_tf_config c;
	int64_t T = (int64_t)nseq * seqlen, qd, kvd, i, t;
	float *q, *k, *v, *o, *r, *dq, *dk, *dv, *s, *ds;
	double *qkv[3], *od, *fd, emax = 0;
	const float *an[3];
	int64_t len[3];

	make_config(&c, 16, 4, 2, 4, 8, VAR_LLAMA);
	qd = 16;
	kvd = 8;
	q = falloc(T * qd); k = falloc(T * kvd); v = falloc(T * kvd);
	o = falloc(T * qd); r = falloc(T * qd); dq = falloc(T * qd);
	dk = falloc(T * kvd); dv = falloc(T * kvd);
	s = falloc((int64_t)QF_TF_BQ * seqlen);
	ds = falloc((int64_t)QF_TF_BQ * seqlen);
	fill(q, T * qd, 2, 0);
	fill(k, T * kvd, 2, 0);
	fill(v, T * kvd, 1, 0);
	fill(r, T * qd, 1, 0);
	/* the float forward, to check the reference against */
	memcpy(o, q, sizeof(float) * (size_t)(T * qd));
	qf_tf_attention(&c, o, k, v, nseq, seqlen, window, s);
	qkv[0] = to_d(q, T * qd);
	qkv[1] = to_d(k, T * kvd);
	qkv[2] = to_d(v, T * kvd);
	od = dalloc(T * qd);
	d_attention(&c, qkv[0], qkv[1], qkv[2], nseq, seqlen, window, od);
	for (i = 0; i < T * qd; i++)
		CHECK_NEAR(o[i], od[i], 1e-5);
	/* dout == dq: the in-place use */
	memcpy(dq, r, sizeof(float) * (size_t)(T * qd));
	qf_tf_attention_bwd(&c, q, k, v, dq, nseq, seqlen, window, dq, dk, dv,
			    s, ds);
	an[0] = dq; an[1] = dk; an[2] = dv;
	len[0] = T * qd; len[1] = len[2] = T * kvd;
	for (t = 0; t < 3; t++) {
		double e = 0, m = 0;

		fd = dalloc(len[t]);
		for (i = 0; i < len[t]; i += stride) {
			double x0 = qkv[t][i], lp, lm;

			qkv[t][i] = x0 + 1e-4;
			d_attention(&c, qkv[0], qkv[1], qkv[2], nseq, seqlen,
				    window, od);
			lp = dot_d(od, r, T * qd);
			qkv[t][i] = x0 - 1e-4;
			d_attention(&c, qkv[0], qkv[1], qkv[2], nseq, seqlen,
				    window, od);
			lm = dot_d(od, r, T * qd);
			qkv[t][i] = x0;
			fd[i] = (lp - lm) / 2e-4;
			e = fmax(e, fabs(an[t][i] - fd[i]));
			m = fmax(m, fabs(fd[i]));
		}
		emax = fmax(emax, e / m);
		free(fd);
	}
	printf("attention backward (%d x %d tokens, window %d%s): max rel "
	       "err %.2e\n", nseq, seqlen, window,
	       stride > 1 ? ", sampled" : "", emax);
	CHECK(emax < 1e-4, ==, 1);
	for (t = 0; t < 3; t++)
		free(qkv[t]);
	free(od); free(q); free(k); free(v); free(o); free(r); free(dq);
	free(dk); free(dv); free(s); free(ds);
}

static void test_swiglu_grad(void)
{
	const int n = 64;
	float g[64], u[64], da[64], dg[64], du[64];
	double e = 0, m = 0;
	int i;

	fill(g, n, 6, 0);
	fill(u, n, 2, 0);
	fill(da, n, 1, 0);
	qf_tf_swiglu_bwd(g, u, da, dg, du, n);
	for (i = 0; i < n; i++) {
		double fg = (d_silu(g[i] + 1e-5) - d_silu(g[i] - 1e-5)) /
			    2e-5 * u[i] * da[i];
		double fu = d_silu(g[i]) * da[i];

		e = fmax(e, fmax(fabs(dg[i] - fg), fabs(du[i] - fu)));
		m = fmax(m, fmax(fabs(fg), fabs(fu)));
	}
	printf("swiglu backward: max rel err %.2e\n", e / m);
	CHECK(e / m < 1e-5, ==, 1);
	/* in place (dg == da) */
	qf_tf_swiglu_bwd(g, u, da, da, du, n);
	CHECK(memcmp(da, dg, sizeof(dg)), ==, 0);
}

/* ------------------------------------------------------------------ */
/* AdaRound                                                           */

static void test_adaround(int bits, bool sym)
{
	const int64_t out = 24, in = 80;	/* groups 32, 32, 16 */
	struct qf_qparams qp = { bits, 32, sym };
	struct qf_adaround a;
	float w[24 * 80], ws[24 * 80], wh[24 * 80], dw[24 * 80], gv[24 * 80];
	uint8_t q[24 * 80], qr[24 * 80];
	uint16_t sc[24 * 3], sc2[24 * 3];
	int32_t z[24 * 3], z2[24 * 3];
	int maxq = (1 << bits) - 1;
	double emax = 0, e_fd = 0, m_fd = 0;
	int64_t i, ties = 0, bad = 0;

	fill(w, out * in, 0.1, 0);
	for (i = 0; i < out * in; i += 37)
		w[i] *= 5;	/* outliers */
	for (i = 0; i < in; i++)
		w[i] = fabsf(w[i]);	/* an all-positive row */
	/* exact ties w / s = k + 1/2 inside group 0 of rows 2..23 (the
	 * group's range, hence its grid, unchanged) */
	CHECK(qf_rtn_quantize(w, out, in, &qp, qr, sc, z), ==, 0);
	for (i = 2; i < out; i++) {
		float s = qf_f16_to_f32(sc[i * 3]);
		float k = (float)(i % 4) - 2 + 0.5f;
		float lo = 0, hi = 0, t = k * s;
		int64_t j;

		for (j = 0; j < 32; j++) {
			lo = fminf(lo, w[i * in + j]);
			hi = fmaxf(hi, w[i * in + j]);
		}
		for (j = 0; j < 32; j++)
			if (t > lo && t < hi && w[i * in + j] > lo &&
			    w[i * in + j] < hi) {
				w[i * in + j] = t;
				break;
			}
	}
	memcpy(sc2, sc, sizeof(sc));
	memcpy(z2, z, sizeof(z));
	CHECK(qf_adaround_init(&a, w, out, in, &qp), ==, 0);
	CHECK(qf_rtn_quantize(w, out, in, &qp, qr, sc, z), ==, 0);
	CHECK(memcmp(sc2, sc, sizeof(sc)), ==, 0);
	CHECK(memcmp(z2, z, sizeof(z)), ==, 0);
	CHECK(a.ngroups, ==, 3);
	CHECK(memcmp(a.sc16, sc, sizeof(sc)), ==, 0);
	CHECK(memcmp(a.zero, z, sizeof(z)), ==, 0);

	/* at init W~ = s (clamp(w / s + z, 0, maxq) - z): w on the grid's
	 * range, clamped outside it */
	qf_adaround_soft(&a, ws);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float s = a.sc[gi];
		double t = (double)w[i] / s + z[gi];

		t = t < 0 ? 0 : t > maxq ? maxq : t;
		emax = fmax(emax, fabs(ws[i] - s * (t - z[gi])) / s);
	}
	printf("adaround %d-bit %s: init soft weights within %.2g scales of "
	       "the clamped fp weights\n", bits, sym ? "sym" : "asym", emax);
	CHECK(emax < 1e-4, ==, 1);

	/* nearest = RTN's codes; so is the hard rounding at init, ties
	 * (to even) included */
	qf_adaround_hard(&a, w, true, q, NULL);
	CHECK(memcmp(q, qr, sizeof(q)), ==, 0);
	qf_adaround_hard(&a, NULL, false, q, wh);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float t = w[i] / a.sc[gi];

		ties += t - floorf(t) == 0.5f;
		bad += q[i] != qr[i];
		CHECK_NEAR(wh[i], a.sc[gi] * ((float)q[i] - z[gi]), 0);
	}
	CHECK(bad, ==, 0);
	CHECK(ties, >=, 10);

	/* any V: codes are floor or floor + 1 of w / s + z, in [0, maxq] */
	for (i = 0; i < out * in; i++)
		a.v[i] = (float)(3 * drand());
	qf_adaround_hard(&a, NULL, false, q, NULL);
	for (i = 0; i < out * in; i++) {
		int64_t gi = (i / in) * 3 + (i % in) / 32;
		float fl = floorf(w[i] / a.sc[gi]) + z[gi];
		float lo = fl < 0 ? 0 : fl > maxq ? maxq : fl;
		float hi = fl + 1 < 0 ? 0 : fl + 1 > maxq ? maxq : fl + 1;

		CHECK(q[i] == lo || q[i] == hi, ==, 1);
		CHECK(q[i], <=, maxq);
		CHECK(q[i] == (a.v[i] >= 0 ? hi : lo), ==, 1);
	}

	/* dL/dV of L = sum dw W~(V) + reg: against finite differences */
	for (i = 0; i < out * in; i++)
		a.v[i] = (float)(2 * drand());
	fill(dw, out * in, 1, 0);
	qf_adaround_grad(&a, dw, 0.05f, 4.0f, gv);
	for (i = 0; i < out * in; i += 7) {
		float v0 = a.v[i];
		double lp, lm, fd;

		a.v[i] = v0 + 1e-3f;
		qf_adaround_soft(&a, ws);
		lp = dot_f(ws, dw, out * in) +
		     qf_adaround_grad(&a, dw, 0.05f, 4.0f, wh);
		a.v[i] = v0 - 1e-3f;
		qf_adaround_soft(&a, ws);
		lm = dot_f(ws, dw, out * in) +
		     qf_adaround_grad(&a, dw, 0.05f, 4.0f, wh);
		a.v[i] = v0;
		fd = (lp - lm) / 2e-3;
		e_fd = fmax(e_fd, fabs(fd - gv[i]));
		m_fd = fmax(m_fd, fabs(fd));
	}
	printf("adaround %d-bit %s: dL/dV max rel err %.2e (float fd), "
	       "%lld ties\n", bits, sym ? "sym" : "asym", e_fd / m_fd,
	       (long long)ties);
	CHECK(e_fd / m_fd < 1e-2, ==, 1);
	qf_adaround_free(&a);
}

/* ------------------------------------------------------------------ */
/* reconstruction                                                     */

/* Mean (block(x) - y)^2 of layer ly on nseq sequences. */
static double block_mse(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, const float *x,
			const float *y, int nseq, int seqlen)
{
	int64_t n = (int64_t)nseq * seqlen * c->hidden, i;
	float *buf = falloc(n);
	double s = 0;

	memcpy(buf, x, sizeof(float) * (size_t)n);
	CHECK(qf_tf_layer_forward(c, ly, 0, buf, nseq, seqlen, NULL, NULL),
	      ==, 0);
	for (i = 0; i < n; i++)
		s += ((double)buf[i] - y[i]) * ((double)buf[i] - y[i]);
	free(buf);
	return s / (double)n;
}

struct recon {
	struct qf_tf_config c;
	struct qf_tf_layer fp;
	float *x, *y;		/* calibration */
	float *xh, *yh;		/* held out */
	int nseq, nheld, seqlen;
};

static int progress_cb(void *arg, int iter, int iters, double rec,
		       double reg)
{
	int *calls = arg;

	(*calls)++;
	if (getenv("QF_BRECQ_VERBOSE"))
		printf("  step %d/%d: rec %.5f reg %.3f\n", iter, iters, rec,
		       reg);
	return 0;
}

/*
 * Inputs with the structure real activations have (and that AdaRound
 * exploits: with isotropic inputs nearest rounding is already optimal
 * per weight): a rank-8 component through a fixed mixing matrix, a few
 * outlier channels, small isotropic noise.
 */
static void gen_inputs(float *x, int64_t ntok, int hid, const float *mix)
{
	int64_t t;
	int i, k;

	for (t = 0; t < ntok; t++) {
		float z[8];

		for (k = 0; k < 8; k++)
			z[k] = (float)drand() * (float)(2.0 / (1 + k));
		for (i = 0; i < hid; i++) {
			float v = 0.3f * (float)drand();

			for (k = 0; k < 8; k++)
				v += z[k] * mix[k * hid + i];
			x[t * hid + i] = v * (i % 13 == 3 ? 6 : 1);
		}
	}
}

static void recon_init(struct recon *r)
{
	float mix[8 * 64];
	int64_t n, nh;

	make_config(&r->c, 64, 4, 2, 16, 160, VAR_LLAMA);
	make_layer(&r->c, &r->fp);
	r->nseq = 64;
	r->nheld = 16;
	r->seqlen = 32;
	n = (int64_t)r->nseq * r->seqlen * r->c.hidden;
	nh = (int64_t)r->nheld * r->seqlen * r->c.hidden;
	r->x = falloc(n); r->y = falloc(n);
	r->xh = falloc(nh); r->yh = falloc(nh);
	fill(mix, 8 * 64, 1.7, 0);
	gen_inputs(r->x, (int64_t)r->nseq * r->seqlen, 64, mix);
	gen_inputs(r->xh, (int64_t)r->nheld * r->seqlen, 64, mix);
	memcpy(r->y, r->x, sizeof(float) * (size_t)n);
	memcpy(r->yh, r->xh, sizeof(float) * (size_t)nh);
	CHECK(qf_tf_layer_forward(&r->c, &r->fp, 0, r->y, r->nseq, r->seqlen,
				  NULL, NULL), ==, 0);
	CHECK(qf_tf_layer_forward(&r->c, &r->fp, 0, r->yh, r->nheld,
				  r->seqlen, NULL, NULL), ==, 0);
}

static void recon_free(struct recon *r)
{
	qf_tf_layer_free(&r->fp);
	free(r->x); free(r->y); free(r->xh); free(r->yh);
}

/* Run BRECQ on a copy of the fp layer; codes into q[], layer into *ly. */
static int recon_run(struct recon *r, const struct qf_brecq_opts *o,
		     struct qf_tf_layer *ly, uint8_t *q[QF_TF_NLINEAR],
		     uint16_t *sc[QF_TF_NLINEAR], int32_t *z[QF_TF_NLINEAR],
		     struct qf_brecq_result *res)
{
	int64_t out, in, ng;
	int l;

	copy_layer(&r->c, &r->fp, ly);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		q[l] = malloc((size_t)(out * in));
		ng = out * qf_ngroups(in, o->qp[l].group);
		sc[l] = malloc(sizeof(uint16_t) * (size_t)ng);
		z[l] = malloc(sizeof(int32_t) * (size_t)ng);
	}
	return qf_brecq_block(&r->c, 0, ly, r->x, r->y, r->nseq, r->seqlen, o,
			      q, sc, z, res);
}

static void free_codes(uint8_t *q[QF_TF_NLINEAR], uint16_t *sc[QF_TF_NLINEAR],
		       int32_t *z[QF_TF_NLINEAR])
{
	int l;

	for (l = 0; l < QF_TF_NLINEAR; l++) {
		free(q[l]);
		free(sc[l]);
		free(z[l]);
	}
}

static void test_reconstruction(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly, rtn;
	uint8_t *q[QF_TF_NLINEAR], *qr;
	uint16_t *sc[QF_TF_NLINEAR], *scr;
	int32_t *z[QF_TF_NLINEAR], *zr;
	double held_rtn, held_brecq;
	int64_t out, in, ng, i, j, flips = 0, nw = 0;
	int l, calls = 0;

	qf_brecq_opts_default(&o);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o.qp[l].bits = 3;
		o.qp[l].group = 32;
	}
	o.batch_seqs = 4;
	o.progress = progress_cb;
	o.arg = &calls;
	o.every = 50;
	o.seed = 7;
	CHECK(recon_run(r, &o, &ly, q, sc, z, &res), ==, 0);
	CHECK(res.iters, ==, o.iters);
	CHECK(calls, ==, o.iters / 50);

	/* RTN on the same grid, for the held-out comparison */
	copy_layer(&r->c, &r->fp, &rtn);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		ng = qf_ngroups(in, 32);
		qr = malloc((size_t)(out * in));
		scr = malloc(sizeof(uint16_t) * (size_t)(out * ng));
		zr = malloc(sizeof(int32_t) * (size_t)(out * ng));
		CHECK(qf_rtn_quantize(r->fp.w[l], out, in, &o.qp[l], qr, scr,
				      zr), ==, 0);
		CHECK(memcmp(scr, sc[l], sizeof(uint16_t) * (size_t)(out * ng)),
		      ==, 0);
		CHECK(memcmp(zr, z[l], sizeof(int32_t) * (size_t)(out * ng)),
		      ==, 0);
		for (i = 0; i < out; i++)
			for (j = 0; j < in; j++) {
				int64_t gi = i * ng + j / 32, k = i * in + j;
				float s = qf_f16_to_f32(scr[gi]);
				float fl = floorf(r->fp.w[l][k] / s) + zr[gi];
				float lo = fl < 0 ? 0 : fl > 7 ? 7 : fl;
				float hi = fl + 1 > 7 ? 7 : fl + 1 < 0 ? 0 :
					   fl + 1;

				rtn.w[l][k] = s * ((float)qr[k] - zr[gi]);
				CHECK(q[l][k] == lo || q[l][k] == hi, ==, 1);
				CHECK(ly.w[l][k] ==
				      s * ((float)q[l][k] - zr[gi]), ==, 1);
				flips += q[l][k] != qr[k];
				nw++;
			}
		free(qr); free(scr); free(zr);
	}
	held_rtn = block_mse(&r->c, &rtn, r->xh, r->yh, r->nheld, r->seqlen);
	held_brecq = block_mse(&r->c, &ly, r->xh, r->yh, r->nheld, r->seqlen);
	CHECK_NEAR(block_mse(&r->c, &rtn, r->x, r->y, r->nseq, r->seqlen),
		   res.mse_rtn, 1e-6 * res.mse_rtn);
	CHECK_NEAR(block_mse(&r->c, &ly, r->x, r->y, r->nseq, r->seqlen),
		   res.mse_final, 1e-6 * res.mse_final);
	printf("reconstruction, 3-bit g32, %d steps (%.2f s): calibration "
	       "MSE rtn %.4g -> brecq %.4g; held-out rtn %.4g -> brecq %.4g "
	       "(%.1f%% lower); %.1f%% of roundings flipped\n", res.iters,
	       res.seconds, res.mse_rtn, res.mse_final, held_rtn, held_brecq,
	       100 * (1 - held_brecq / held_rtn), 100.0 * flips / nw);
	CHECK(res.mse_final < res.mse_rtn, ==, 1);
	CHECK(held_brecq < 0.9 * held_rtn, ==, 1);
	/* the norms and the fp weights' biases are untouched */
	CHECK(memcmp(ly.in_norm, r->fp.in_norm, sizeof(float) * 64), ==, 0);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
	qf_tf_layer_free(&rtn);
}

static void test_determinism(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res[2];
	struct qf_tf_layer ly[2];
	uint8_t *q[2][QF_TF_NLINEAR];
	uint16_t *sc[2][QF_TF_NLINEAR];
	int32_t *z[2][QF_TF_NLINEAR];
	int64_t out, in;
	int l, k, same = 1;

	qf_brecq_opts_default(&o);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		o.qp[l].bits = 3;
		o.qp[l].group = 32;
		o.qp[l].sym = l % 2;
	}
	o.qp[QF_TF_V].bits = 16;	/* kept in fp */
	o.iters = 40;
	o.batch_seqs = 3;
	o.seed = 12345;
	for (k = 0; k < 2; k++)
		CHECK(recon_run(r, &o, &ly[k], q[k], sc[k], z[k], &res[k]),
		      ==, 0);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		if (l == QF_TF_V) {
			size_t sz = sizeof(float) * (size_t)(out * in);

			CHECK(memcmp(ly[0].w[l], r->fp.w[l], sz), ==, 0);
			continue;
		}
		same &= !memcmp(q[0][l], q[1][l], (size_t)(out * in));
		same &= !memcmp(ly[0].w[l], ly[1].w[l],
				sizeof(float) * (size_t)(out * in));
	}
	CHECK(same, ==, 1);
	CHECK(res[0].mse_final == res[1].mse_final, ==, 1);
	printf("determinism: two runs with seed %llu give identical codes "
	       "(%s)\n", (unsigned long long)o.seed, same ? "yes" : "NO");
	for (k = 0; k < 2; k++) {
		free_codes(q[k], sc[k], z[k]);
		qf_tf_layer_free(&ly[k]);
	}
}

/* No steps: the codes are RTN's (the baseline a variant with 0 steps). */
static void test_iters0(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly;
	uint8_t *q[QF_TF_NLINEAR], *qr;
	uint16_t *sc[QF_TF_NLINEAR], *scr;
	int32_t *z[QF_TF_NLINEAR], *zr;
	int64_t out, in, ng;
	int l, same = 1;

	qf_brecq_opts_default(&o);
	o.iters = 0;
	CHECK(recon_run(r, &o, &ly, q, sc, z, &res), ==, 0);
	CHECK(res.iters, ==, 0);
	CHECK(res.mse_final == res.mse_rtn, ==, 1);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		ng = out * qf_ngroups(in, o.qp[l].group);
		qr = malloc((size_t)(out * in));
		scr = malloc(sizeof(uint16_t) * (size_t)ng);
		zr = malloc(sizeof(int32_t) * (size_t)ng);
		CHECK(qf_rtn_quantize(r->fp.w[l], out, in, &o.qp[l], qr, scr,
				      zr), ==, 0);
		same &= !memcmp(qr, q[l], (size_t)(out * in));
		free(qr);
		free(scr);
		free(zr);
	}
	CHECK(same, ==, 1);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
}

static int abort_cb(void *arg, int iter, int iters, double rec, double reg)
{
	(void)arg; (void)iters; (void)rec; (void)reg;
	return iter == 2 ? -ECANCELED : 0;
}

/* Bad options fail cleanly; an aborted run leaves the weights as given. */
static void test_errors(struct recon *r)
{
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	struct qf_tf_layer ly;
	uint8_t *q[QF_TF_NLINEAR];
	uint16_t *sc[QF_TF_NLINEAR];
	int32_t *z[QF_TF_NLINEAR];
	int64_t out, in;
	int l, same = 1;

	qf_brecq_opts_default(&o);
	o.qp[QF_TF_UP].bits = 9;
	CHECK(recon_run(r, &o, &ly, q, sc, z, &res), ==, -EINVAL);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
	qf_brecq_opts_default(&o);
	o.beta_lo = 0.5f;
	CHECK(recon_run(r, &o, &ly, q, sc, z, &res), ==, -EINVAL);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);

	qf_brecq_opts_default(&o);
	o.progress = abort_cb;
	o.every = 1;
	CHECK(recon_run(r, &o, &ly, q, sc, z, &res), ==, -ECANCELED);
	CHECK(res.iters, ==, 2);
	for (l = 0; l < QF_TF_NLINEAR; l++) {
		lin_dims(&r->c, l, &out, &in);
		same &= !memcmp(ly.w[l], r->fp.w[l],
				sizeof(float) * (size_t)(out * in));
	}
	CHECK(same, ==, 1);
	free_codes(q, sc, z);
	qf_tf_layer_free(&ly);
}

/* Seconds per Adam step at the 5M model's shapes (hidden 256, inter 768,
 * 8 heads of 32, 4 kv heads, seqlen 512, 2 sequences a batch). */
static void test_speed(void)
{
	struct qf_tf_config c;
	struct qf_tf_layer ly;
	struct qf_brecq_opts o;
	struct qf_brecq_result res;
	const int seqlen = 512, nseq = 2;
	int64_t n = (int64_t)nseq * seqlen * 256;
	float *x = falloc(n), *y = falloc(n);
	double t0, t1;
#if defined(__SANITIZE_ADDRESS__)
	const int iters = 1;
#else
	const int iters = 10;
#endif

	make_config(&c, 256, 8, 4, 32, 768, VAR_LLAMA);
	make_layer(&c, &ly);
	fill(x, n, 1, 0);
	memcpy(y, x, sizeof(float) * (size_t)n);
	CHECK(qf_tf_layer_forward(&c, &ly, 0, y, nseq, seqlen, NULL, NULL),
	      ==, 0);
	qf_brecq_opts_default(&o);
	o.iters = 0;
	t0 = now_s();
	CHECK(qf_brecq_block(&c, 0, &ly, x, y, nseq, seqlen, &o, NULL, NULL,
			     NULL, &res), ==, 0);
	t0 = now_s() - t0;
	qf_brecq_opts_default(&o);
	o.iters = iters;
	t1 = now_s();
	CHECK(qf_brecq_block(&c, 0, &ly, x, y, nseq, seqlen, &o, NULL, NULL,
			     NULL, &res), ==, 0);
	t1 = now_s() - t1;
	printf("speed: hidden 256, inter 768, 8 heads, seqlen 512, batch 2 "
	       "seqs: %.3f s per step (%d steps; setup and MSE %.3f s)\n",
	       (t1 - t0) / iters, iters, t0);
	qf_tf_layer_free(&ly);
	free(x);
	free(y);
}

int main(void)
{
	struct recon r;
	int v;

	setvbuf(stdout, NULL, _IONBF, 0);
	for (v = VAR_LLAMA; v <= VAR_GEMMA; v++)
		test_block_grad(v);
	test_rmsnorm_grad();
	test_rope_grad();
	test_swiglu_grad();
	attn_grad_case(2, 7, 0, 1);
	attn_grad_case(2, 7, 4, 1);
	attn_grad_case(1, 150, 0, 13);
	attn_grad_case(1, 150, 100, 13);
	test_adaround(3, false);
	test_adaround(4, true);
	test_adaround(2, false);
	recon_init(&r);
	test_reconstruction(&r);
	test_determinism(&r);
	test_errors(&r);
	test_iters0(&r);
	recon_free(&r);
	test_speed();
	return qf_check_exit();
}
