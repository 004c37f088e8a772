/*
 * awq_reflip.c - GQA ReFlip (awq.c's fourth step): refine the rounding of
 * q_proj and k_proj against the attention scores, and the relative score
 * error it minimises (also the held-out check of eval_scores.c).
 *
 * ReFlip works on [hd, hd] Gram matrices instead of the activations and
 * never forms the [n, n] score matrices (see rf_head_sums()).  Rounding
 * moves follow awq.c's conventions (awq_i.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "awq_i.h"

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
