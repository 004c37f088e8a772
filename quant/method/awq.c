/*
 * awq.c - AWQ (Lin et al. 2023) for one block of linears: AutoAWQ's
 * asymmetric grid, the activation-aware scale search, the clip search and
 * a greedy rounding correction.  The GQA ReFlip refinement of q_proj and
 * k_proj is in awq_reflip.c, the AutoAWQ GEMM packing in io/pack_awq.c.
 *
 * Errors are measured with H = X^T X instead of the activations: for a
 * weight difference D, ||X D^T||_F^2 = sum over rows of d H d^T, so one
 * [in, in] matrix stands for any number of calibration tokens and every
 * energy is an SGEMM.
 *
 * Weights are row-major [out, in] (nn.Linear).  Rounding is half to even
 * (torch.round) by the 1.5 * 2^23 trick on arguments clamped to the grid
 * first, which keeps it exact; do not build with -ffast-math.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "awq_i.h"

#define RND_MAGIC 12582912.0f		/* 1.5 * 2^23 */
#define ROW_BLOCK 128			/* rows per SGEMM: bounds scratch */
#define FLIP_THREADS 2			/* the flips' threads at most */
#define SCALE_FLOOR 1e-5f		/* smallest grid scale (AutoAWQ) */
#define SAL_FLOOR 1e-4			/* salience floor */

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

/* Element k of row r of D (struct qf_err_rows). */
static inline float err_at(const struct qf_err_rows *e, int64_t r, int64_t k)
{
	int64_t i = r * e->in + k, g;

	if (e->w)
		return e->w0[i] - e->w[i];
	if (!e->q)
		return e->w0[i];
	g = r * e->ng + k / e->gs;
	return e->w0[i] - qf_f16_to_f32(e->sc[g]) *
			  ((float)e->q[i] - (float)e->z[g]);
}

void qf_err_rows(const struct qf_err_rows *e, int64_t r0, int64_t n, float *d)
{
	int64_t r, k;

	for (r = 0; r < n; r++)
		for (k = 0; k < e->in; k++)
			d[r * e->in + k] = err_at(e, r0 + r, k);
}

/* The energy without scratch memory: slow, for when malloc fails. */
static double energy_plain(const struct qf_err_rows *e, int64_t out,
			   const float *h)
{
	int64_t in = e->in, r, i, j;
	double s = 0, acc;

	for (r = 0; r < out; r++)
		for (i = 0; i < in; i++) {
			float di = err_at(e, r, i);

			if (di == 0)
				continue;
			acc = 0;
			for (j = 0; j < in; j++)
				acc += (double)h[i * in + j] * err_at(e, r, j);
			s += di * acc;
		}
	return s;
}

/* sum over rows of d H d^T, ROW_BLOCK rows of D at a time */
static double energy(const struct qf_err_rows *e, int64_t out, const float *h)
{
	struct blk b = { 0 };
	int64_t in = e->in, r0, i, rows;
	double s = 0;

	if (out <= 0 || in <= 0)
		return 0;
	if (blk_init(&b, min64(out, ROW_BLOCK), in) < 0)
		return energy_plain(e, out, h);
	for (r0 = 0; r0 < out; r0 += b.rows) {
		rows = min64(b.rows, out - r0);
		qf_err_rows(e, r0, rows, b.d);
		row_energy(b.d, rows, in, h, in, b.t, b.e);
		for (i = 0; i < rows; i++)
			s += b.e[i];
	}
	blk_free(&b);
	return s;
}

double qf_awq_energy(const float *w, const float *w2, int64_t out,
		     int64_t in, const float *h)
{
	struct qf_err_rows e = { .w0 = w, .w = w2, .in = in };

	return energy(&e, out, h);
}

double qf_awq_rel_err(const float *w, const float *w2, int64_t out,
		      int64_t in, const float *h)
{
	double base = qf_awq_energy(w, NULL, out, in, h);

	return base > 0 ? qf_awq_energy(w, w2, out, in, h) / base : 0;
}

double qf_awq_energy_codes(const float *w, const uint8_t *q,
			   const uint16_t *sc, const int32_t *zero,
			   int64_t gs, int64_t out, int64_t in,
			   const float *h)
{
	struct qf_err_rows e = { .w0 = w, .q = q, .sc = sc, .z = zero,
				 .in = in, .ng = (in + gs - 1) / gs,
				 .gs = gs };

	return energy(&e, out, h);
}

double qf_awq_rel_err_codes(const float *w, const uint8_t *q,
			    const uint16_t *sc, const int32_t *zero,
			    int64_t gs, int64_t out, int64_t in,
			    const float *h)
{
	double base = qf_awq_energy(w, NULL, out, in, h);

	return base > 0 ? qf_awq_energy_codes(w, q, sc, zero, gs, out, in,
					      h) / base : 0;
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

void qf_awq_scales(const float *sal, int64_t in, double alpha, float *s)
{
	make_scales(sal, in, alpha, s);
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

struct clip_arg {
	float *w;
	int64_t out, in, ng, gs;
	const float *h;
	const struct qf_awq_opts *o;
	int ret;			/* the first error of any part */
};

/* Row blocks [b0, b1) of ROW_BLOCK rows: independent of one another. */
static void clip_blocks(void *arg, int64_t b0, int64_t b1)
{
	struct clip_arg *c = arg;
	struct blk b = { 0 };
	int64_t r0, g, a;
	int ret = blk_init(&b, min64(c->out, ROW_BLOCK), c->gs);
	bool made = !ret;

	for (r0 = b0 * ROW_BLOCK; r0 < min64(c->out, b1 * ROW_BLOCK) && !ret;
	     r0 += ROW_BLOCK)
		for (g = 0; g < c->ng && !ret; g++) {
			a = g * c->gs;
			ret = clip_group(c->w + r0 * c->in + a,
					 min64(ROW_BLOCK, c->out - r0),
					 min64(c->gs, c->in - a), c->in,
					 c->h + a * c->in + a, c->in, c->o, &b);
		}
	if (made)
		blk_free(&b);
	if (ret)
		__atomic_store_n(&c->ret, ret, __ATOMIC_RELAXED);
}

int qf_awq_search_clip(float *w, int64_t out, int64_t in, const float *h,
		       const struct qf_awq_opts *o)
{
	struct clip_arg c = { w, out, in, 0, 0, h, o, 0 };

	if (out <= 0 || in <= 0)
		return 0;
	group_span(in, o->group, &c.ng, &c.gs);
	/* the row blocks over the CPUs (each one's SGEMMs take OpenBLAS's
	 * threads in turn; the rest, most of the time, runs beside) */
	qf_par_for(clip_blocks, &c, (out + ROW_BLOCK - 1) / ROW_BLOCK, 1, 1);
	return c.ret;
}

/* ------------------------------------------------------------------ */
/* heuristic rounding correction                                      */

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

/* Scratch of qf_awq_flip() beyond the row block, one per thread. */
struct flip_ws {
	double *g;			/* [in] H d of the row */
	double *del;			/* [in] steps, 0 = none */
};

/* The flips of rows [r0, r1) of a block, on one thread. */
struct flip_job {
	const float *w;			/* the block's first row */
	uint8_t *q;
	const uint16_t *sc16;
	const int32_t *zero;
	const float *h;
	const double *hd;		/* [in] diag(H) */
	const float *t;			/* [rows, in] d H of the block */
	double *e;			/* [rows] energies, updated */
	int64_t r0, r1, in, group;
	int bits;
	struct flip_ws f;
	int64_t flips;			/* out */
};

static void *flip_rows(void *arg)
{
	struct flip_job *fj = arg;
	int64_t ng, gs, r, j, k, in = fj->in;
	int maxq = (1 << fj->bits) - 1;

	group_span(in, fj->group, &ng, &gs);
	for (r = fj->r0; r < fj->r1; r++) {
		const float *wr = fj->w + r * in;
		uint8_t *qr = fj->q + r * in;

		for (j = 0; j < in; j++) {
			k = r * ng + j / gs;
			fj->f.g[j] = fj->t[r * in + j];
			fj->f.del[j] = flip_step(wr[j], qr[j],
						 qf_f16_to_f32(fj->sc16[k]),
						 fj->zero[k], maxq);
		}
		fj->flips += flip_row(fj->h, fj->hd, in, fj->f.g, fj->f.del,
				      qr, &fj->e[r]);
	}
	return NULL;
}

/*
 * Flips of rows [r0, r0 + rows), split over the threads of jobs (rows
 * are independent); adds to e[0] (before) and e[1] (after) in row order.
 */
static int64_t flip_block(const float *w, int64_t r0, int64_t rows,
			  int64_t in, const float *h,
			  const struct qf_awq_opts *o, uint8_t *q,
			  const uint16_t *sc16, const int32_t *zero,
			  struct blk *b, struct flip_job *jobs, int nj,
			  double *e)
{
	int64_t ng, gs, r, flips = 0;
	int i;

	group_span(in, o->group, &ng, &gs);
	diff_rows(w + r0 * in, q + r0 * in, sc16 + r0 * ng, zero + r0 * ng,
		  rows, in, o->group, b->d);
	row_energy(b->d, rows, in, h, in, b->t, b->e);
	for (r = 0; r < rows; r++)
		e[0] += b->e[r];
	nj = rows < nj ? (int)rows : nj;
	for (i = 0; i < nj; i++) {
		struct flip_job *fj = &jobs[i];

		fj->w = w + r0 * in;
		fj->q = q + r0 * in;
		fj->sc16 = sc16 + r0 * ng;
		fj->zero = zero + r0 * ng;
		fj->t = b->t;
		fj->e = b->e;
		fj->r0 = rows * i / nj;
		fj->r1 = rows * (i + 1) / nj;
		fj->flips = 0;
	}
	qf_run_jobs(flip_rows, jobs, sizeof(jobs[0]), nj);
	for (i = 0; i < nj; i++)
		flips += jobs[i].flips;
	for (r = 0; r < rows; r++)
		e[1] += b->e[r];
	return flips;
}

int qf_awq_flip(const float *w, int64_t out, int64_t in, const float *h,
		const struct qf_awq_opts *o, uint8_t *q, const uint16_t *sc16,
		const int32_t *zero, double *err_before, double *err_after,
		int64_t *nflips)
{
	struct flip_job jobs[FLIP_THREADS];
	struct blk b = { 0 };
	double e[2] = { 0, 0 }, *hd = NULL;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int nj = cpus < 1 ? 1 : cpus > FLIP_THREADS ? FLIP_THREADS : (int)cpus;
	int64_t r0, j, flips = 0;
	int i, ret = -ENOMEM;

	memset(jobs, 0, sizeof(jobs));
	if (out > 0 && in > 0) {
		hd = malloc((size_t)in * sizeof(*hd));
		for (i = 0; i < nj; i++) {
			jobs[i].f.g = malloc((size_t)in * sizeof(double));
			jobs[i].f.del = malloc((size_t)in * sizeof(double));
			if (!jobs[i].f.g || !jobs[i].f.del)
				goto out_free;
			jobs[i].h = h;
			jobs[i].hd = hd;
			jobs[i].in = in;
			jobs[i].group = o->group;
			jobs[i].bits = o->bits;
		}
		if (!hd || blk_init(&b, min64(out, ROW_BLOCK), in) < 0)
			goto out_free;
		for (j = 0; j < in; j++)
			hd[j] = h[j * in + j];
		for (r0 = 0; r0 < out; r0 += b.rows)
			flips += flip_block(w, r0, min64(b.rows, out - r0),
					    in, h, o, q, sc16, zero, &b, jobs,
					    nj, e);
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
	for (i = 0; i < nj; i++) {
		free(jobs[i].f.g);
		free(jobs[i].f.del);
	}
	free(hd);
	return ret;
}
