/*
 * awq.c - AWQ (Lin et al. 2023) for one block of linears: AutoAWQ's
 * asymmetric grid, the activation-aware scale search, the clip search, a
 * greedy rounding correction, the GQA ReFlip refinement of q_proj and
 * k_proj against the attention scores, and the AutoAWQ GEMM packing.
 *
 * Errors are measured with H = X^T X instead of the activations: for a
 * weight difference D, ||X D^T||_F^2 = sum over rows of d H d^T, so one
 * [in, in] matrix stands for any number of calibration tokens and every
 * energy is an SGEMM.  ReFlip works on [hd, hd] Gram matrices for the same
 * reason and never forms the [n, n] score matrices (see rf_head_sums()).
 *
 * Weights are row-major [out, in] (nn.Linear).  Rounding is half to even
 * (torch.round) by the 1.5 * 2^23 trick on arguments clamped to the grid
 * first, which keeps it exact; do not build with -ffast-math.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define RND_MAGIC 12582912.0f		/* 1.5 * 2^23 */
#define ROW_BLOCK 128			/* rows per SGEMM: bounds scratch */
#define SCALE_FLOOR 1e-5f		/* smallest grid scale (AutoAWQ) */
#define SAL_FLOOR 1e-4			/* salience floor */
#define FLIP_TOL 1e-12			/* least relative gain of a flip */

/* Round half to even; exact for |x| < 2^22, which callers ensure. */
static inline float rnd(float x)
{
	return (x + RND_MAGIC) - RND_MAGIC;
}

static inline int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

/*
 * Level of w on the grid (sc, z), clamp(round(w / sc) + z, 0, maxq), as a
 * float.  Clamping the quotient first gives the same result (the bounds
 * are integers) and keeps rnd() in its exact range.
 */
static inline float level(float w, float sc, float z, float maxq)
{
	float v = w / sc;

	v = v < -z ? -z : v;
	v = v > maxq - z ? maxq - z : v;
	return rnd(v) + z;
}

/* Groups of a row and their width (the last one may be shorter). */
static void group_span(int64_t in, int group, int64_t *ng, int64_t *gs)
{
	*ng = qf_ngroups(in, group);
	*gs = *ng == 1 ? in : group;
}

int qf_awq_grid(float lo, float hi, int bits, uint16_t *sc16, float *sc,
		int32_t *zero)
{
	float maxq = (float)((1 << bits) - 1);
	float scale = (hi - lo) / maxq;
	float z;

	/* a NaN range stays NaN here and fails the check below */
	if (scale < SCALE_FLOOR)
		scale = SCALE_FLOOR;
	*sc16 = qf_f32_to_f16(scale);
	*sc = qf_f16_to_f32(*sc16);
	if (!isfinite(*sc))
		return QF_ENUMERIC;
	z = -lo / *sc;
	z = z < 0 ? 0 : z;
	z = z > maxq ? maxq : z;
	*zero = (int32_t)rnd(z);
	return 0;
}

void qf_awq_defaults(struct qf_awq_opts *o, int bits, int group)
{
	o->bits = bits;
	o->group = group;
	o->n_grid = 20;
	o->clip_grid = 20;
	o->max_shrink = 0.5f;
	o->flip = true;
}

/* Grid of one group w[0..len) from its range, and the levels q. */
static int group_rtn(const float *w, int64_t len, int bits, uint8_t *q,
		     uint16_t *sc16, int32_t *zero)
{
	float maxq = (float)((1 << bits) - 1);
	float lo = w[0], hi = w[0], sc, z;
	int64_t j;
	int ret;

	for (j = 1; j < len; j++) {
		lo = w[j] < lo ? w[j] : lo;
		hi = w[j] > hi ? w[j] : hi;
	}
	ret = qf_awq_grid(lo, hi, bits, sc16, &sc, zero);
	if (ret < 0)
		return ret;
	z = (float)*zero;
	for (j = 0; j < len; j++)
		q[j] = (uint8_t)level(w[j], sc, z, maxq);
	return 0;
}

/* Same, but dst[0..len) gets the dequantized values (dst may be w). */
QF_HOT static int group_fake(const float *w, int64_t len, int bits,
			     float *dst)
{
	float maxq = (float)((1 << bits) - 1);
	float lo = w[0], hi = w[0], sc, z;
	uint16_t sc16;
	int32_t zi;
	int64_t j;
	int ret;

	for (j = 1; j < len; j++) {
		lo = w[j] < lo ? w[j] : lo;
		hi = w[j] > hi ? w[j] : hi;
	}
	ret = qf_awq_grid(lo, hi, bits, &sc16, &sc, &zi);
	if (ret < 0)
		return ret;
	z = (float)zi;
	for (j = 0; j < len; j++)
		dst[j] = sc * (level(w[j], sc, z, maxq) - z);
	return 0;
}

int qf_awq_rtn(const float *w, int64_t out, int64_t in,
	       const struct qf_awq_opts *o, uint8_t *q, uint16_t *sc16,
	       int32_t *zero)
{
	int64_t ng, gs, r, g;
	int ret;

	group_span(in, o->group, &ng, &gs);
	for (r = 0; r < out; r++) {
		for (g = 0; g < ng; g++) {
			int64_t a = g * gs;

			ret = group_rtn(w + r * in + a, min64(gs, in - a),
					o->bits, q + r * in + a,
					&sc16[r * ng + g], &zero[r * ng + g]);
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

/* d = dequantized - w for rows of q [rows, in] with their grids. */
static void diff_rows(const float *w, const uint8_t *q, const uint16_t *sc16,
		      const int32_t *zero, int64_t rows, int64_t in,
		      int group, float *d)
{
	int64_t ng, gs, r, j;

	group_span(in, group, &ng, &gs);
	for (r = 0; r < rows; r++) {
		for (j = 0; j < in; j++) {
			int64_t g = r * ng + j / gs;
			float sc = qf_f16_to_f32(sc16[g]);

			d[r * in + j] = sc * ((float)q[r * in + j] -
					      (float)zero[g]) - w[r * in + j];
		}
	}
}

/*
 * e[r] = d_r H d_r^T for the rows of d [rows, len]; h has leading
 * dimension ldh (a diagonal block of a bigger H is fine).  t [rows, len]
 * receives d H, the error gradient the flip search starts from.
 */
static void row_energy(const float *d, int64_t rows, int64_t len,
		       const float *h, int64_t ldh, float *t, double *e)
{
	int64_t r, j;

	qf_sgemm(false, false, (int)rows,
		    (int)len, (int)len, 1.0f, d, (int)len, h, (int)ldh, 0.0f,
		    t, (int)len);
	for (r = 0; r < rows; r++) {
		double s = 0;

		for (j = 0; j < len; j++)
			s += (double)t[r * len + j] * d[r * len + j];
		e[r] = s;
	}
}

/* Scratch of the row-blocked searches. */
struct blk {
	int64_t rows;			/* rows it holds */
	float *d;			/* [rows, width] differences */
	float *t;			/* [rows, width] d H */
	double *e;			/* [rows] energies */
	double *eb;			/* [rows] best energies */
	float *m;			/* [rows] max |w| */
	float *best;			/* [rows] best clip bounds */
};

static void blk_free(struct blk *b)
{
	free(b->d);
	free(b->t);
	free(b->e);
	free(b->eb);
	free(b->m);
	free(b->best);
}

static int blk_init(struct blk *b, int64_t rows, int64_t width)
{
	size_t n = (size_t)(rows * width);

	b->rows = rows;
	b->d = malloc(n * sizeof(*b->d));
	b->t = malloc(n * sizeof(*b->t));
	b->e = malloc((size_t)rows * sizeof(*b->e));
	b->eb = malloc((size_t)rows * sizeof(*b->eb));
	b->m = malloc((size_t)rows * sizeof(*b->m));
	b->best = malloc((size_t)rows * sizeof(*b->best));
	if (!b->d || !b->t || !b->e || !b->eb || !b->m || !b->best) {
		blk_free(b);
		return -ENOMEM;
	}
	return 0;
}

/* The energy without scratch memory: slow, for when malloc fails. */
static double energy_plain(const float *w, const float *w2, int64_t out,
			   int64_t in, const float *h)
{
	double e = 0, acc;
	int64_t r, i, j;

	for (r = 0; r < out; r++) {
		const float *a = w + r * in, *b = w2 + r * in;

		for (i = 0; i < in; i++) {
			if (a[i] == b[i])
				continue;
			acc = 0;
			for (j = 0; j < in; j++)
				acc += (double)h[i * in + j] * (a[j] - b[j]);
			e += (a[i] - b[i]) * acc;
		}
	}
	return e;
}

double qf_awq_energy(const float *w, const float *w2, int64_t out,
		     int64_t in, const float *h)
{
	struct blk b = { 0 };
	double e = 0;
	int64_t r0, i, rows;

	if (out <= 0 || in <= 0)
		return 0;
	if (blk_init(&b, min64(out, ROW_BLOCK), in) < 0)
		return energy_plain(w, w2, out, in, h);
	for (r0 = 0; r0 < out; r0 += b.rows) {
		rows = min64(b.rows, out - r0);
		for (i = 0; i < rows * in; i++)
			b.d[i] = w[r0 * in + i] - w2[r0 * in + i];
		row_energy(b.d, rows, in, h, in, b.t, b.e);
		for (i = 0; i < rows; i++)
			e += b.e[i];
	}
	blk_free(&b);
	return e;
}

/* ------------------------------------------------------------------ */
/* scale search                                                       */

/* s = max(sal, 1e-4)^alpha / sqrt(max(s) min(s)), as llm-awq. */
static void make_scales(const float *sal, int64_t in, double alpha, float *s)
{
	double mx = 0, mn = INFINITY, v, norm;
	int64_t j;

	for (j = 0; j < in; j++) {
		v = pow(fmax(sal[j], SAL_FLOOR), alpha);
		mx = fmax(mx, v);
		mn = fmin(mn, v);
	}
	norm = sqrt(mx * mn);
	for (j = 0; j < in; j++)
		s[j] = (float)(pow(fmax(sal[j], SAL_FLOOR), alpha) / norm);
}

/* d = RTN(w diag(s)) diag(s)^-1 - w for rows of w [rows, in]. */
QF_HOT static int scaled_diff(const float *w, int64_t rows, int64_t in,
			      const float *s, const struct qf_awq_opts *o,
			      float *d)
{
	int64_t ng, gs, r, g, j;
	int ret;

	group_span(in, o->group, &ng, &gs);
	for (r = 0; r < rows; r++) {
		const float *wr = w + r * in;
		float *dr = d + r * in;

		for (j = 0; j < in; j++)
			dr[j] = wr[j] * s[j];
		for (g = 0; g < ng; g++) {
			ret = group_fake(dr + g * gs, min64(gs, in - g * gs),
					 o->bits, dr + g * gs);
			if (ret < 0)
				return ret;
		}
		for (j = 0; j < in; j++)
			dr[j] = dr[j] / s[j] - wr[j];
	}
	return 0;
}

/* Summed output energy of the n linears quantized with scales s. */
static int scaled_error(const float *const *w, const int64_t *out, int n,
			int64_t in, const float *s, const float *h,
			const struct qf_awq_opts *o, struct blk *b,
			double *err)
{
	int64_t r0, r, rows;
	int k, ret;

	*err = 0;
	for (k = 0; k < n; k++) {
		for (r0 = 0; r0 < out[k]; r0 += b->rows) {
			rows = min64(b->rows, out[k] - r0);
			ret = scaled_diff(w[k] + r0 * in, rows, in, s, o, b->d);
			if (ret < 0)
				return ret;
			row_energy(b->d, rows, in, h, in, b->t, b->e);
			for (r = 0; r < rows; r++)
				*err += b->e[r];
		}
	}
	return 0;
}

int qf_awq_search_scale(const float *const *w, const int64_t *out, int n,
			int64_t in, const float *sal, const float *h,
			const struct qf_awq_opts *o, float *s, double *alpha,
			double *err_best, double *err_plain)
{
	int ngrid = o->n_grid > 0 ? o->n_grid : 1;
	double e, best = INFINITY, plain = 0;
	int64_t maxout = 1;
	struct blk b = { 0 };
	float *cur;
	int i, k, ibest = 0, ret;

	if (in <= 0)
		return -EINVAL;
	for (k = 0; k < n; k++)
		maxout = out[k] > maxout ? out[k] : maxout;
	cur = malloc((size_t)in * sizeof(*cur));
	if (!cur)
		return -ENOMEM;
	ret = blk_init(&b, min64(maxout, ROW_BLOCK), in);
	if (ret < 0)
		goto out_free;
	for (i = 0; i < ngrid; i++) {
		make_scales(sal, in, (double)i / ngrid, cur);
		ret = scaled_error(w, out, n, in, cur, h, o, &b, &e);
		if (ret < 0)
			goto out_free;
		if (i == 0)
			plain = e;
		/* ties keep the smaller alpha */
		if (i == 0 || e < best) {
			best = e;
			ibest = i;
			memcpy(s, cur, (size_t)in * sizeof(*s));
		}
	}
	if (alpha)
		*alpha = (double)ibest / ngrid;
	if (err_best)
		*err_best = best;
	if (err_plain)
		*err_plain = plain;
out_free:
	blk_free(&b);
	free(cur);
	return ret;
}

/* ------------------------------------------------------------------ */
/* clip search                                                        */

/*
 * Clip bound of each row of one group: w [rows, len] with leading
 * dimension ld, hg the group's diagonal block of H (leading dimension
 * ldh).  Every ratio is scored on all rows at once with one SGEMM; the
 * error is against the unclipped weights.  Clamps w to the winners.
 */
static int clip_group(float *w, int64_t rows, int64_t len, int64_t ld,
		      const float *hg, int64_t ldh,
		      const struct qf_awq_opts *o, struct blk *b)
{
	int nr = o->clip_grid > 0 ? o->clip_grid : 1;
	int64_t r, j;
	int i, ret;

	for (r = 0; r < rows; r++) {
		b->m[r] = 0;
		for (j = 0; j < len; j++)
			b->m[r] = fmaxf(b->m[r], fabsf(w[r * ld + j]));
	}
	for (i = 0; i < nr; i++) {
		double ratio = 1.0 - (double)i / nr * o->max_shrink;

		for (r = 0; r < rows; r++) {
			const float *wr = w + r * ld;
			float *dr = b->d + r * len;
			float bound = (float)(b->m[r] * ratio);

			for (j = 0; j < len; j++)
				dr[j] = fminf(fmaxf(wr[j], -bound), bound);
			ret = group_fake(dr, len, o->bits, dr);
			if (ret < 0)
				return ret;
			for (j = 0; j < len; j++)
				dr[j] -= wr[j];
		}
		row_energy(b->d, rows, len, hg, ldh, b->t, b->e);
		for (r = 0; r < rows; r++) {
			/* ties keep the larger ratio, tried first */
			if (i == 0 || b->e[r] < b->eb[r]) {
				b->eb[r] = b->e[r];
				b->best[r] = (float)(b->m[r] * ratio);
			}
		}
	}
	for (r = 0; r < rows; r++)
		for (j = 0; j < len; j++)
			w[r * ld + j] = fminf(fmaxf(w[r * ld + j],
						    -b->best[r]), b->best[r]);
	return 0;
}

int qf_awq_search_clip(float *w, int64_t out, int64_t in, const float *h,
		       const struct qf_awq_opts *o)
{
	struct blk b = { 0 };
	int64_t ng, gs, r0, g, a;
	int ret;

	if (out <= 0 || in <= 0)
		return 0;
	group_span(in, o->group, &ng, &gs);
	ret = blk_init(&b, min64(out, ROW_BLOCK), gs);
	if (ret < 0)
		return ret;
	for (r0 = 0; r0 < out && !ret; r0 += b.rows) {
		for (g = 0; g < ng && !ret; g++) {
			a = g * gs;
			ret = clip_group(w + r0 * in + a,
					 min64(b.rows, out - r0),
					 min64(gs, in - a), in,
					 h + a * in + a, in, o, &b);
		}
	}
	blk_free(&b);
	return ret;
}

/* ------------------------------------------------------------------ */
/* heuristic rounding correction                                      */

/*
 * The change of the dequantized value when w's level q moves to the other
 * grid neighbour of w / sc + z (up if q rounded down, else down); 0 when
 * that level leaves [0, maxq].
 */
static double flip_step(float w, int q, float sc, int32_t z, int maxq)
{
	int dir = (float)q <= w / sc + (float)z ? 1 : -1;

	if (q + dir < 0 || q + dir > maxq)
		return 0;
	return dir * (double)sc;
}

/*
 * Greedy flips of one row.  With d = dequantized - w and g = H d, moving
 * weight j by del changes d H d^T by del (2 g_j + del H_jj) and g by
 * del H[:, j]: O(in) per flip.  del[j] = 0 marks weights that cannot or
 * may no longer flip.  Returns the flips made; *e is the row's energy.
 */
QF_HOT static int64_t flip_row(const float *h, const double *hd, int64_t in,
			       double *g, double *del, uint8_t *q, double *e)
{
	int64_t n = 0, j, k, bj;
	double best, ch, dl;

	for (;;) {
		best = 0;
		bj = -1;
		for (j = 0; j < in; j++) {
			if (del[j] == 0)
				continue;
			ch = del[j] * (2 * g[j] + del[j] * hd[j]);
			if (ch < best) {
				best = ch;
				bj = j;
			}
		}
		if (bj < 0 || best >= -FLIP_TOL * fabs(*e))
			break;
		dl = del[bj];
		q[bj] = (uint8_t)(q[bj] + (dl > 0 ? 1 : -1));
		for (k = 0; k < in; k++)
			g[k] += dl * h[bj * in + k];
		*e += best;
		del[bj] = 0;
		n++;
	}
	return n;
}

/* Scratch of qf_awq_flip() beyond the row block. */
struct flip_ws {
	double *g;			/* [in] H d of the row */
	double *del;			/* [in] steps, 0 = none */
	double *hd;			/* [in] diag(H) */
};

/* Flips of rows [r0, r0 + rows); adds to e[0] (before), e[1] (after). */
static int64_t flip_block(const float *w, int64_t r0, int64_t rows,
			  int64_t in, const float *h,
			  const struct qf_awq_opts *o, uint8_t *q,
			  const uint16_t *sc16, const int32_t *zero,
			  struct blk *b, struct flip_ws *f, double *e)
{
	int64_t ng, gs, r, j, k, flips = 0;
	int maxq = (1 << o->bits) - 1;

	group_span(in, o->group, &ng, &gs);
	diff_rows(w + r0 * in, q + r0 * in, sc16 + r0 * ng, zero + r0 * ng,
		  rows, in, o->group, b->d);
	row_energy(b->d, rows, in, h, in, b->t, b->e);
	for (r = 0; r < rows; r++) {
		const float *wr = w + (r0 + r) * in;
		uint8_t *qr = q + (r0 + r) * in;

		for (j = 0; j < in; j++) {
			k = (r0 + r) * ng + j / gs;
			f->g[j] = b->t[r * in + j];
			f->del[j] = flip_step(wr[j], qr[j],
					      qf_f16_to_f32(sc16[k]), zero[k],
					      maxq);
		}
		e[0] += b->e[r];
		flips += flip_row(h, f->hd, in, f->g, f->del, qr, &b->e[r]);
		e[1] += b->e[r];
	}
	return flips;
}

int qf_awq_flip(const float *w, int64_t out, int64_t in, const float *h,
		const struct qf_awq_opts *o, uint8_t *q, const uint16_t *sc16,
		const int32_t *zero, double *err_before, double *err_after,
		int64_t *nflips)
{
	struct flip_ws f = { 0 };
	struct blk b = { 0 };
	double e[2] = { 0, 0 };
	int64_t r0, j, flips = 0;
	int ret = -ENOMEM;

	if (out > 0 && in > 0) {
		f.g = malloc((size_t)in * sizeof(*f.g));
		f.del = malloc((size_t)in * sizeof(*f.del));
		f.hd = malloc((size_t)in * sizeof(*f.hd));
		if (!f.g || !f.del || !f.hd ||
		    blk_init(&b, min64(out, ROW_BLOCK), in) < 0)
			goto out_free;
		for (j = 0; j < in; j++)
			f.hd[j] = h[j * in + j];
		for (r0 = 0; r0 < out; r0 += b.rows)
			flips += flip_block(w, r0, min64(b.rows, out - r0),
					    in, h, o, q, sc16, zero, &b, &f, e);
	}
	if (err_before)
		*err_before = e[0];
	if (err_after)
		*err_after = e[1];
	if (nflips)
		*nflips = flips;
	ret = 0;
out_free:
	blk_free(&b);
	free(f.g);
	free(f.del);
	free(f.hd);
	return ret;
}

/* ------------------------------------------------------------------ */
/* GQA ReFlip                                                         */

/* Slots of the [hd, hd] scratch matrices (rf_ws.m). */
enum {
	M_QQ,				/* Q^T Q */
	M_DQDQ,				/* dQ^T dQ */
	M_DQQ,				/* dQ^T Q */
	M_KK,				/* K^T K */
	M_KPKP,				/* K'^T K' */
	M_DKKP,				/* dK^T K' */
	M_DKDK,				/* dK^T dK */
	M_1,				/* sum_h dQ_h^T Q'_h */
	M_2,				/* sum_h Q_h^T Q'_h */
	M_QPQP,				/* sum_h Q'_h^T Q'_h */
	M_N,
};

/*
 * ReFlip state.  Primes are the dequantized weights, d the differences
 * (dQ = Q' - Q = X (Wq' - Wq)^T).
 */
struct rf_ws {
	int64_t n;			/* sample tokens */
	int64_t in;			/* input channels */
	int64_t hd;			/* head_dim */
	int64_t grp;			/* query heads per key head */
	int64_t nq;			/* q rows: heads * hd */
	int64_t nk;			/* k rows: kv_heads * hd */
	int64_t c;			/* critical channels */
	int64_t lim;			/* flips per row */
	int64_t ng;			/* groups per row */
	int64_t gs;			/* group width */
	int maxq;			/* 2^bits - 1 */
	int64_t *crit;			/* [c] critical channels, sorted */
	float *xc;			/* [n, c] their columns of x */
	float *hc;			/* [c, c] xc^T xc */
	float *q;			/* [n, nq] X Wq^T */
	float *dq;			/* [n, nq] X (Wq' - Wq)^T */
	float *qp;			/* [n, nq] Q + dQ */
	float *k;			/* [n, nk] X Wk^T */
	float *dk;			/* [n, nk] X (Wk' - Wk)^T */
	float *kp;			/* [n, nk] K + dK */
	float *dwq;			/* [nq, in] Wq' - Wq */
	float *dwk;			/* [nk, in] Wk' - Wk */
	float *a;			/* [c, hd] */
	float *b;			/* [c, hd] */
	float *gf;			/* [c, hd] */
	float *m;			/* [M_N, hd, hd] */
	double *g;			/* [c, hd] X_c^T E K' (or sum) */
	double *cm;			/* [hd, hd] K'^T K' (or sum) */
	double *del;			/* [c, hd] steps, 0 = none */
	int64_t *cnt;			/* [hd] flips of each row */
};

/* One projection's weights and levels as ReFlip changes them. */
struct rf_mat {
	const float *w;			/* [rows, in] fp weights */
	uint8_t *q;			/* [rows, in] levels */
	const uint16_t *sc16;		/* [rows, ng] */
	const int32_t *zero;		/* [rows, ng] */
	float *dw;			/* [rows, in] dequantized - w */
};

static void rf_free(struct rf_ws *s)
{
	free(s->crit);
	free(s->xc);
	free(s->hc);
	free(s->q);
	free(s->dq);
	free(s->qp);
	free(s->k);
	free(s->dk);
	free(s->kp);
	free(s->dwq);
	free(s->dwk);
	free(s->a);
	free(s->b);
	free(s->gf);
	free(s->m);
	free(s->g);
	free(s->cm);
	free(s->del);
	free(s->cnt);
}

#define RF_ALLOC(p, n) ((p) = malloc((size_t)(n) * sizeof(*(p))), !(p))

/* Sizes from r; buffers for n tokens and c (>= 1) critical channels. */
static int rf_alloc(struct rf_ws *s, int64_t n, int64_t in,
		    const struct qf_reflip_opts *r, int64_t c)
{
	int64_t hd = r->head_dim, nq = r->heads * hd, nk = r->kv_heads * hd;

	memset(s, 0, sizeof(*s));
	s->n = n;
	s->in = in;
	s->hd = hd;
	s->grp = r->heads / r->kv_heads;
	s->nq = nq;
	s->nk = nk;
	s->c = c;
	if (RF_ALLOC(s->crit, c) || RF_ALLOC(s->xc, n * c) ||
	    RF_ALLOC(s->hc, c * c) || RF_ALLOC(s->q, n * nq) ||
	    RF_ALLOC(s->dq, n * nq) || RF_ALLOC(s->qp, n * nq) ||
	    RF_ALLOC(s->k, n * nk) || RF_ALLOC(s->dk, n * nk) ||
	    RF_ALLOC(s->kp, n * nk) || RF_ALLOC(s->dwq, nq * in) ||
	    RF_ALLOC(s->dwk, nk * in) || RF_ALLOC(s->a, c * hd) ||
	    RF_ALLOC(s->b, c * hd) || RF_ALLOC(s->gf, c * hd) ||
	    RF_ALLOC(s->m, M_N * hd * hd) || RF_ALLOC(s->g, c * hd) ||
	    RF_ALLOC(s->cm, hd * hd) || RF_ALLOC(s->del, c * hd) ||
	    RF_ALLOC(s->cnt, hd)) {
		rf_free(s);
		return -ENOMEM;
	}
	return 0;
}

static bool rf_shape_ok(const struct qf_reflip_opts *r, int64_t in,
			int64_t n)
{
	return r->heads > 0 && r->kv_heads > 0 && r->head_dim > 0 &&
	       r->heads % r->kv_heads == 0 && in > 0 && n > 0;
}

/* out [rows, cols] = a^T b for a [n, rows], b [n, cols] (given lds). */
static void gemm_tn(const float *a, int64_t lda, const float *b, int64_t ldb,
		    int64_t n, int64_t rows, int64_t cols, float beta,
		    float *out)
{
	qf_sgemm(true, false, (int)rows,
		    (int)cols, (int)n, 1.0f, a, (int)lda, b, (int)ldb, beta,
		    out, (int)cols);
}

/* tr(a b) of two [m, m] matrices. */
static double trace_mm(const float *a, const float *b, int64_t m)
{
	double t = 0;
	int64_t i, j;

	for (i = 0; i < m; i++)
		for (j = 0; j < m; j++)
			t += (double)a[i * m + j] * b[j * m + i];
	return t;
}

/*
 * ||S'_h - S_h||^2 and ||S_h||^2 of one query head from [n, hd] column
 * blocks, without the [n, n] scores: E = S' - S = dQ K'^T + Q dK^T, so
 * ||E||^2 = tr(dQ^T dQ K'^T K') + 2 tr(dQ^T Q dK^T K') + tr(Q^T Q dK^T dK)
 * and ||S||^2 = tr(Q^T Q K^T K).  Leaves the Grams in slots M_QQ..M_DKDK.
 */
static void rf_head_sums(struct rf_ws *s, int64_t h, double *num,
			 double *den)
{
	int64_t hd = s->hd, hh = hd * hd, n = s->n, g = h / s->grp;
	const float *qh = s->q + h * hd, *dqh = s->dq + h * hd;
	const float *kh = s->k + g * hd, *dkh = s->dk + g * hd;
	const float *kph = s->kp + g * hd;
	float *m = s->m;

	gemm_tn(qh, s->nq, qh, s->nq, n, hd, hd, 0, m + M_QQ * hh);
	gemm_tn(dqh, s->nq, dqh, s->nq, n, hd, hd, 0, m + M_DQDQ * hh);
	gemm_tn(dqh, s->nq, qh, s->nq, n, hd, hd, 0, m + M_DQQ * hh);
	gemm_tn(kh, s->nk, kh, s->nk, n, hd, hd, 0, m + M_KK * hh);
	gemm_tn(kph, s->nk, kph, s->nk, n, hd, hd, 0, m + M_KPKP * hh);
	gemm_tn(dkh, s->nk, kph, s->nk, n, hd, hd, 0, m + M_DKKP * hh);
	gemm_tn(dkh, s->nk, dkh, s->nk, n, hd, hd, 0, m + M_DKDK * hh);
	*num = trace_mm(m + M_DQDQ * hh, m + M_KPKP * hh, hd) +
	       2 * trace_mm(m + M_DQQ * hh, m + M_DKKP * hh, hd) +
	       trace_mm(m + M_QQ * hh, m + M_DKDK * hh, hd);
	*den = trace_mm(m + M_QQ * hh, m + M_KK * hh, hd);
}

/* Q = X Wq^T and K = X Wk^T. */
static void rf_project_fp(struct rf_ws *s, const float *x, const float *wq,
			  const float *wk)
{
	qf_sgemm(false, true, (int)s->n,
		    (int)s->nq, (int)s->in, 1.0f, x, (int)s->in, wq,
		    (int)s->in, 0.0f, s->q, (int)s->nq);
	qf_sgemm(false, true, (int)s->n,
		    (int)s->nk, (int)s->in, 1.0f, x, (int)s->in, wk,
		    (int)s->in, 0.0f, s->k, (int)s->nk);
}

/*
 * dQ, dK from dwq, dwk (projecting the differences, not subtracting
 * projections, keeps their precision) and Q' = Q + dQ, K' = K + dK.
 */
static void rf_project_diff(struct rf_ws *s, const float *x)
{
	int64_t i;

	qf_sgemm(false, true, (int)s->n,
		    (int)s->nq, (int)s->in, 1.0f, x, (int)s->in, s->dwq,
		    (int)s->in, 0.0f, s->dq, (int)s->nq);
	qf_sgemm(false, true, (int)s->n,
		    (int)s->nk, (int)s->in, 1.0f, x, (int)s->in, s->dwk,
		    (int)s->in, 0.0f, s->dk, (int)s->nk);
	for (i = 0; i < s->n * s->nq; i++)
		s->qp[i] = s->q[i] + s->dq[i];
	for (i = 0; i < s->n * s->nk; i++)
		s->kp[i] = s->k[i] + s->dk[i];
}

/* Relative score error over all heads; needs rf_project_diff(). */
static double rf_score(struct rf_ws *s, int heads)
{
	double num = 0, den = 0, nh, dh;
	int h;

	for (h = 0; h < heads; h++) {
		rf_head_sums(s, h, &nh, &dh);
		num += nh;
		den += dh;
	}
	if (den > 0)
		return num / den;
	return num > 0 ? INFINITY : 0;
}

static int cmp_sal(const void *a, const void *b, void *arg)
{
	const float *sal = arg;
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	if (sal[x] != sal[y])
		return sal[x] < sal[y] ? -1 : 1;
	return x < y ? -1 : x > y;	/* stable: ties by index */
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The c channels of moderate salience: the band of c around the median
 * of the channels sorted by sal; then xc and hc = xc^T xc.
 */
static int rf_critical(struct rf_ws *s, const float *sal, const float *x)
{
	int64_t *ord = malloc((size_t)s->in * sizeof(*ord));
	int64_t j, t, c = s->c;

	if (!ord)
		return -ENOMEM;
	for (j = 0; j < s->in; j++)
		ord[j] = j;
	qsort_r(ord, (size_t)s->in, sizeof(*ord), cmp_sal, (void *)sal);
	memcpy(s->crit, ord + (s->in - c) / 2, (size_t)c * sizeof(*ord));
	free(ord);
	qsort(s->crit, (size_t)c, sizeof(*s->crit), cmp_i64);
	for (t = 0; t < s->n; t++)
		for (j = 0; j < c; j++)
			s->xc[t * c + j] = x[t * s->in + s->crit[j]];
	gemm_tn(s->xc, c, s->xc, c, s->n, c, c, 0, s->hc);
	return 0;
}

/* Candidate steps of rows row0.. of m (the head's rows), cm, g from f32. */
static void rf_setup(struct rf_ws *s, const struct rf_mat *m, int64_t row0,
		     const float *cm)
{
	int64_t hd = s->hd, ci, d;

	for (ci = 0; ci < s->c; ci++) {
		for (d = 0; d < hd; d++) {
			int64_t r = row0 + d, j = s->crit[ci];
			int64_t k = r * s->ng + j / s->gs;

			s->del[ci * hd + d] = flip_step(m->w[r * s->in + j],
					m->q[r * s->in + j],
					qf_f16_to_f32(m->sc16[k]),
					m->zero[k], s->maxq);
			s->g[ci * hd + d] = s->gf[ci * hd + d];
		}
	}
	for (d = 0; d < hd * hd; d++)
		s->cm[d] = cm[d];
	memset(s->cnt, 0, (size_t)hd * sizeof(*s->cnt));
}

/* Move weight (r, j) of m one level by the sign of del. */
static void rf_apply(const struct rf_ws *s, struct rf_mat *m, int64_t r,
		     int64_t j, double del)
{
	int64_t i = r * s->in + j, k = r * s->ng + j / s->gs;
	float sc = qf_f16_to_f32(m->sc16[k]);

	m->q[i] = (uint8_t)(m->q[i] + (del > 0 ? 1 : -1));
	m->dw[i] = sc * ((float)m->q[i] - (float)m->zero[k]) - m->w[i];
}

/*
 * Greedy flips of one head (rows row0 .. row0 + hd of m) starting from
 * error e: moving weight (crit[ci], d) by del changes the error by
 * del (2 G[ci, d] + del Hc[ci, ci] C[d, d]) and G by
 * del Hc[:, ci] C[d, :].  Returns the flips made.
 */
QF_HOT static int64_t rf_greedy(struct rf_ws *s, struct rf_mat *m,
				int64_t row0, double e)
{
	int64_t hd = s->hd, c = s->c, n = 0, ci, d, bc, bd, k;
	double best, ch, dl;

	for (;;) {
		best = 0;
		bc = bd = -1;
		for (ci = 0; ci < c; ci++) {
			double hcc = s->hc[ci * c + ci];

			for (d = 0; d < hd; d++) {
				dl = s->del[ci * hd + d];
				if (dl == 0 || s->cnt[d] >= s->lim)
					continue;
				ch = dl * (2 * s->g[ci * hd + d] +
					   dl * hcc * s->cm[d * hd + d]);
				if (ch < best) {
					best = ch;
					bc = ci;
					bd = d;
				}
			}
		}
		if (bc < 0 || best >= -FLIP_TOL * fabs(e))
			break;
		dl = s->del[bc * hd + bd];
		rf_apply(s, m, row0 + bd, s->crit[bc], dl);
		for (ci = 0; ci < c; ci++) {
			double f = dl * s->hc[ci * c + bc];

			for (k = 0; k < hd; k++)
				s->g[ci * hd + k] += f * s->cm[bd * hd + k];
		}
		e += best;
		s->del[bc * hd + bd] = 0;
		s->cnt[bd]++;
		n++;
	}
	return n;
}

/*
 * Query head h against the fixed quantized keys: G = X_c^T E K' =
 * (X_c^T dQ) K'^T K' + (X_c^T Q) dK^T K', C = K'^T K'.
 */
static int64_t rf_query_head(struct rf_ws *s, struct rf_mat *mq, int64_t h)
{
	int64_t hd = s->hd, hh = hd * hd, c = s->c;
	double e, den;

	rf_head_sums(s, h, &e, &den);
	gemm_tn(s->xc, c, s->dq + h * hd, s->nq, s->n, c, hd, 0, s->a);
	gemm_tn(s->xc, c, s->q + h * hd, s->nq, s->n, c, hd, 0, s->b);
	qf_sgemm(false, false, (int)c,
		    (int)hd, (int)hd, 1.0f, s->a, (int)hd, s->m + M_KPKP * hh,
		    (int)hd, 0.0f, s->gf, (int)hd);
	qf_sgemm(false, false, (int)c,
		    (int)hd, (int)hd, 1.0f, s->b, (int)hd, s->m + M_DKKP * hh,
		    (int)hd, 1.0f, s->gf, (int)hd);
	rf_setup(s, mq, h * hd, s->m + M_KPKP * hh);
	return rf_greedy(s, mq, h * hd, e);
}

/*
 * Key head g against its query heads' refined queries: G = sum_h
 * X_c^T E_h^T Q'_h = (X_c^T K') M1 + (X_c^T dK) M2 with M1 = sum_h
 * dQ_h^T Q'_h, M2 = sum_h Q_h^T Q'_h; C = sum_h Q'_h^T Q'_h.
 */
static int64_t rf_key_head(struct rf_ws *s, struct rf_mat *mk, int64_t g)
{
	int64_t hd = s->hd, hh = hd * hd, c = s->c, h;
	float *m = s->m;
	double e = 0, eh, den;

	for (h = g * s->grp; h < (g + 1) * s->grp; h++) {
		const float *qh = s->q + h * hd, *dqh = s->dq + h * hd;
		const float *qph = s->qp + h * hd;
		float beta = h == g * s->grp ? 0.0f : 1.0f;

		rf_head_sums(s, h, &eh, &den);
		e += eh;
		gemm_tn(dqh, s->nq, qph, s->nq, s->n, hd, hd, beta,
			m + M_1 * hh);
		gemm_tn(qh, s->nq, qph, s->nq, s->n, hd, hd, beta,
			m + M_2 * hh);
		gemm_tn(qph, s->nq, qph, s->nq, s->n, hd, hd, beta,
			m + M_QPQP * hh);
	}
	gemm_tn(s->xc, c, s->kp + g * hd, s->nk, s->n, c, hd, 0, s->a);
	gemm_tn(s->xc, c, s->dk + g * hd, s->nk, s->n, c, hd, 0, s->b);
	qf_sgemm(false, false, (int)c,
		    (int)hd, (int)hd, 1.0f, s->a, (int)hd, m + M_1 * hh,
		    (int)hd, 0.0f, s->gf, (int)hd);
	qf_sgemm(false, false, (int)c,
		    (int)hd, (int)hd, 1.0f, s->b, (int)hd, m + M_2 * hh,
		    (int)hd, 1.0f, s->gf, (int)hd);
	rf_setup(s, mk, g * hd, m + M_QPQP * hh);
	return rf_greedy(s, mk, g * hd, e);
}

/* Count of pct * total, at least 1 and at most total. */
static int64_t pct_count(float pct, int64_t total)
{
	int64_t c = (int64_t)floor((double)pct * (double)total);

	return c < 1 ? 1 : c > total ? total : c;
}

/*
 * Both phases over all heads.  A flip is taken only when the tracked
 * error drops, but the tracked values carry float noise; should the
 * recomputed error come out higher after all, the input levels are put
 * back so the refinement never makes things worse.
 */
static int64_t rf_run(struct rf_ws *s, const float *x,
		      const struct qf_reflip_opts *r, struct rf_mat *mq,
		      struct rf_mat *mk, const uint8_t *save, double *before,
		      double *after)
{
	int64_t h, flips = 0;

	rf_project_diff(s, x);
	*before = rf_score(s, r->heads);
	for (h = 0; h < r->heads; h++)
		flips += rf_query_head(s, mq, h);
	rf_project_diff(s, x);
	for (h = 0; h < r->kv_heads; h++)
		flips += rf_key_head(s, mk, h);
	rf_project_diff(s, x);
	*after = rf_score(s, r->heads);
	if (*after > *before) {
		memcpy(mq->q, save, (size_t)(s->nq * s->in));
		memcpy(mk->q, save + s->nq * s->in, (size_t)(s->nk * s->in));
		*after = *before;
		flips = 0;
	}
	return flips;
}

int qf_awq_reflip(const float *wq, const float *wk, int64_t in,
		  const float *x, int64_t n, const float *sal,
		  const struct qf_awq_opts *o, const struct qf_reflip_opts *r,
		  uint8_t *qq, const uint16_t *scq, const int32_t *zq,
		  uint8_t *qk, const uint16_t *sck, const int32_t *zk,
		  double *err_before, double *err_after, int64_t *nflips)
{
	struct rf_mat mq = { wq, qq, scq, zq, NULL };
	struct rf_mat mk = { wk, qk, sck, zk, NULL };
	double before, after;
	struct rf_ws s;
	uint8_t *save;
	int64_t flips;
	int ret;

	if (!rf_shape_ok(r, in, n))
		return -EINVAL;
	ret = rf_alloc(&s, n, in, r, pct_count(r->critical_dim_pct, in));
	if (ret < 0)
		return ret;
	s.lim = pct_count(r->max_flip_pct, in);
	s.maxq = (1 << o->bits) - 1;
	group_span(in, o->group, &s.ng, &s.gs);
	mq.dw = s.dwq;
	mk.dw = s.dwk;
	save = malloc((size_t)((s.nq + s.nk) * in));
	ret = save ? rf_critical(&s, sal, x) : -ENOMEM;
	if (ret < 0)
		goto out_free;
	memcpy(save, qq, (size_t)(s.nq * in));
	memcpy(save + s.nq * in, qk, (size_t)(s.nk * in));
	diff_rows(wq, qq, scq, zq, s.nq, in, o->group, s.dwq);
	diff_rows(wk, qk, sck, zk, s.nk, in, o->group, s.dwk);
	rf_project_fp(&s, x, wq, wk);
	flips = rf_run(&s, x, r, &mq, &mk, save, &before, &after);
	if (err_before)
		*err_before = before;
	if (err_after)
		*err_after = after;
	if (nflips)
		*nflips = flips;
out_free:
	free(save);
	rf_free(&s);
	return ret;
}

/* NaN when the arguments are inconsistent or memory runs out. */
double qf_awq_score_error(const float *wq, const float *wk,
			  const float *wq2, const float *wk2, int64_t in,
			  const float *x, int64_t n,
			  const struct qf_reflip_opts *r)
{
	struct rf_ws s;
	double err;
	int64_t i;

	if (!rf_shape_ok(r, in, n) || rf_alloc(&s, n, in, r, 1) < 0)
		return NAN;
	for (i = 0; i < s.nq * in; i++)
		s.dwq[i] = wq2[i] - wq[i];
	for (i = 0; i < s.nk * in; i++)
		s.dwk[i] = wk2[i] - wk[i];
	rf_project_fp(&s, x, wq, wk);
	rf_project_diff(&s, x);
	err = rf_score(&s, r->heads);
	rf_free(&s);
	return err;
}

/* ------------------------------------------------------------------ */
/* AutoAWQ GEMM packing                                               */

/* Nibble i of a packed word holds output column 8c + awq_order[i]. */
static const int awq_order[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };

bool qf_awq_packable(int bits, int64_t in, int64_t out, int group)
{
	if (bits != 4 || in <= 0 || out <= 0 || out % 8)
		return false;
	return group <= 0 || group >= in || in % group == 0;
}

/* words [rows, cols / 8] from v, where v(row, col) = v[col * ld + row]. */
static void pack_cols(const int32_t *v32, const uint8_t *v8, int64_t ld,
		      int64_t rows, int64_t cols, uint32_t *words)
{
	int64_t r, c, i;

	for (r = 0; r < rows; r++) {
		for (c = 0; c < cols / 8; c++) {
			uint32_t wd = 0;

			for (i = 0; i < 8; i++) {
				int64_t k = (8 * c + awq_order[i]) * ld + r;
				uint32_t v = v32 ? (uint32_t)v32[k] : v8[k];

				wd |= (v & 15u) << (4 * i);
			}
			words[r * (cols / 8) + c] = wd;
		}
	}
}

void qf_awq_pack(const uint8_t *q, const uint16_t *sc16, const int32_t *zero,
		 int64_t out, int64_t in, int64_t ngroups, uint32_t *qweight,
		 uint32_t *qzeros, uint16_t *scales)
{
	int64_t o, g;

	pack_cols(NULL, q, in, in, out, qweight);
	pack_cols(zero, NULL, ngroups, ngroups, out, qzeros);
	for (o = 0; o < out; o++)
		for (g = 0; g < ngroups; g++)
			scales[g * out + o] = sc16[o * ngroups + g];
}

/* Inverse of pack_cols into v(row, col) = v[col * ld + row]. */
static void unpack_cols(const uint32_t *words, int64_t ld, int64_t rows,
			int64_t cols, int32_t *v32, uint8_t *v8)
{
	int64_t r, c, i;

	for (r = 0; r < rows; r++) {
		for (c = 0; c < cols / 8; c++) {
			uint32_t wd = words[r * (cols / 8) + c];

			for (i = 0; i < 8; i++) {
				int64_t k = (8 * c + awq_order[i]) * ld + r;
				uint32_t v = (wd >> (4 * i)) & 15u;

				if (v32)
					v32[k] = (int32_t)v;
				else
					v8[k] = (uint8_t)v;
			}
		}
	}
}

void qf_awq_unpack(const uint32_t *qweight, const uint32_t *qzeros,
		   const uint16_t *scales, int64_t out, int64_t in,
		   int64_t ngroups, uint8_t *q, uint16_t *sc16, int32_t *zero)
{
	int64_t o, g;

	unpack_cols(qweight, in, in, out, NULL, q);
	unpack_cols(qzeros, ngroups, ngroups, out, zero, NULL);
	for (o = 0; o < out; o++)
		for (g = 0; g < ngroups; g++)
			sc16[o * ngroups + g] = scales[g * out + o];
}
