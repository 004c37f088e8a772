/*
 * test_brecq_grad.c - BRECQ's hand-written block backward: the block
 * forward with saved activations against qf_tf_layer_forward; every
 * weight gradient against central finite differences, (a) of a plain
 * double-precision reference block written here and (b) of the float
 * forward itself, for llama, q/k/v bias (qwen2), q/k norm (qwen3) and
 * Gemma 3's options; each sub-op's backward (rmsnorm, rope, attention,
 * swiglu) likewise.  test_brecq.c has the rest of BRECQ.
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
#include "brecq_fixture.h"

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

int main(void)
{
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
	return qf_check_exit();
}
