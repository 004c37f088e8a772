/*
 * adaround.c - AdaRound (Nagel et al. 2020) of one linear on its RTN grid:
 * the soft rounding variables V, their gradient through the rectified
 * sigmoid with the rounding regularizer, Adam, and the hard rounding
 * (brecq.h, struct qf_adaround).  The state lives in memory, or, for a
 * block too big to hold it (brecq.c, qf_brecq_opts.mem_bytes), V and the
 * moments in a file, read and written a block of rows at a time; the
 * elementwise arithmetic is the same either way, so are the codes.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "brecq.h"
#include "method.h"
#include "tf_backward.h"

void qf_adaround_free(struct qf_adaround *a)
{
	if (!a)
		return;
	free(a->base8);
	free(a->base16);
	free(a->v);
	free(a->m1);
	free(a->m2);
	free(a->sc);
	free(a->sc16);
	free(a->zero);
	memset(a, 0, sizeof(*a));
}

/* Elements of the regularizer's per-weight values summed at a time. */
#define REG_CHUNK 256

static inline float sigmoid_poly(float v)
{
	return 1.0f / (1.0f + qf_tf_exp_poly(-v));
}

/*
 * ln(x) for normal x > 0: Cephes' logf polynomial, vectorizable (the
 * exponent and mantissa by bits).
 */
static inline float log_poly(float x)
{
	union {
		float f;
		uint32_t u;
	} v = { x };
	int32_t ex = (int32_t)(v.u >> 23) - 126;
	int32_t lt;
	float e, m, z, y;

	v.u = (v.u & 0x007fffffu) | 0x3f000000u;	/* m in [0.5, 1) */
	/* below sqrt(1/2): 2m - 1 and e - 1, else m - 1 (integer flags:
	 * a float select would stop the vectorizer) */
	lt = v.u < 0x3f3504f3u;
	e = (float)(ex - lt);
	m = v.f * (float)(1 + lt) - 1;
	z = m * m;
	y = 7.0376836292e-2f;
	y = y * m - 1.1514610310e-1f;
	y = y * m + 1.1676998740e-1f;
	y = y * m - 1.2420140846e-1f;
	y = y * m + 1.4249322787e-1f;
	y = y * m - 1.6668057665e-1f;
	y = y * m + 2.0000714765e-1f;
	y = y * m - 2.4999993993e-1f;
	y = y * m + 3.3333331174e-1f;
	y = y * m * z;
	y += -2.12194440e-4f * e;
	y += -0.5f * z;
	return m + y + 0.693359375f * e;
}

/*
 * Group gi (row gi / ngroups, its grid at sc[gi], zero[gi]): its weights
 * are [returned, *j1) of the row-major matrix, the last group of a row
 * cut at the row's end.
 */
static inline int64_t group_span(const struct qf_adaround *a, int64_t gi,
				 int64_t *j1)
{
	int64_t r = gi / a->ngroups;
	int64_t j0 = r * a->in + gi % a->ngroups * a->gs;
	int64_t end = (r + 1) * a->in;

	*j1 = j0 + a->gs < end ? j0 + a->gs : end;
	return j0;
}

/* Store base j, clamped to [-2, maxq + 1] (brecq.h: the same rounding). */
static inline void base_set(struct qf_adaround *a, int64_t j, float base)
{
	float hi = (float)(1 << a->bits);

	base = base < -2 ? -2 : base > hi ? hi : base;
	if (a->base8)
		a->base8[j] = (uint8_t)(base + 2);
	else
		a->base16[j] = (int16_t)base;
}

/* base [j0, j0 + n) as floats into dst. */
static inline void base_run(const struct qf_adaround *a, int64_t j0,
			    int64_t n, float *dst)
{
	int64_t j;

	if (a->base8)
		for (j = 0; j < n; j++)
			dst[j] = (float)a->base8[j0 + j] - 2;
	else
		for (j = 0; j < n; j++)
			dst[j] = (float)a->base16[j0 + j];
}

/* The grid of group gi of w, and base/V of its columns. */
static int init_group(struct qf_adaround *a, const float *w,
		      const struct qf_qparams *qp, int64_t gi)
{
	int64_t ib, ia = group_span(a, gi, &ib);
	const double zg = QF_ADAROUND_ZETA - QF_ADAROUND_GAMMA;
	float lo, hi, s;
	int64_t j;
	int ret;

	lo = hi = w[ia];
	for (j = ia; j < ib; j++) {
		lo = w[j] < lo ? w[j] : lo;
		hi = w[j] > hi ? w[j] : hi;
	}
	ret = qf_rtn_grid(lo, hi, qp, &a->sc16[gi], &a->sc[gi], &a->zero[gi]);
	if (ret < 0)
		return ret;
	s = a->sc[gi];
	for (j = ia; j < ib; j++) {
		float t = w[j] / s;	/* as qf_rtn_quantize divides */
		float fl = floorf(t);
		double frac = (double)t - fl;

		base_set(a, j, fl + (float)a->zero[gi]);
		/* h(V) = frac: V = -log((zeta - gamma) / (frac - gamma) - 1) */
		a->v[j] = (float)-log(zg / (frac - QF_ADAROUND_GAMMA) - 1.0);
		/* an exact tie: just below or above 0 as RTN rounds it (to
		 * even), so that the initial V's hard rounding is RTN's */
		if (frac == 0.5)
			a->v[j] = fmodf(fl, 2.0f) == 0 ? -1e-6f : 1e-6f;
	}
	return 0;
}

int qf_adaround_init(struct qf_adaround *a, const float *w, int64_t out,
		     int64_t in, const struct qf_qparams *qp)
{
	size_t n = (size_t)(out * in);
	int64_t gi;
	int ret;

	memset(a, 0, sizeof(*a));
	if (qp->bits < 2 || qp->bits > 8 || out <= 0 || in <= 0)
		return -EINVAL;
	a->out = out;
	a->in = in;
	a->bits = qp->bits;
	a->ngroups = qf_ngroups(in, qp->group);
	a->gs = a->ngroups == 1 ? in : qp->group;
	a->fd = -1;
	if (qp->bits <= 7)
		a->base8 = malloc(n);
	else
		a->base16 = malloc(n * sizeof(int16_t));
	a->v = malloc(n * sizeof(float));
	a->sc = malloc(sizeof(float) * (size_t)(out * a->ngroups));
	a->sc16 = malloc(sizeof(uint16_t) * (size_t)(out * a->ngroups));
	a->zero = malloc(sizeof(int32_t) * (size_t)(out * a->ngroups));
	if ((!a->base8 && !a->base16) || !a->v || !a->sc || !a->sc16 ||
	    !a->zero) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (gi = 0; gi < out * a->ngroups; gi++) {
		ret = init_group(a, w, qp, gi);
		if (ret < 0)
			goto out_free;
	}
	return 0;

out_free:
	qf_adaround_free(a);
	return ret;
}

/* h(V) clipped to [0, 1]. */
static inline float rect_sigmoid(float v)
{
	return qf_tf_clampf(sigmoid_poly(v) * (QF_ADAROUND_ZETA -
			    QF_ADAROUND_GAMMA) + QF_ADAROUND_GAMMA, 0, 1);
}

/*
 * Rows [r0, r1) of the state: v, m1, m2 point at row r0's first
 * element, in a's arrays or (spilled) in buf, read from the file.
 */
struct rows {
	int64_t r0, r1;
	float *v, *m1, *m2;
};

/* Rows of a spilled state read and written at a time: about 128 KiB of
 * each array (the three fit in L2 while they are updated). */
static int64_t block_rows(const struct qf_adaround *a)
{
	int64_t r = ((int64_t)1 << 15) / a->in;

	return r < 1 ? 1 : r;
}

/* Rows [r0, r1): of V alone, or with the moments. */
static int rows_load(const struct qf_adaround *a, int64_t r0, int64_t r1,
		     bool moments, float *buf, struct rows *b)
{
	size_t len = (size_t)((r1 - r0) * a->in) * sizeof(float);
	uint64_t n = (uint64_t)(a->out * a->in) * sizeof(float);
	uint64_t at = a->off + (uint64_t)(r0 * a->in) * sizeof(float);
	int ret;

	b->r0 = r0;
	b->r1 = r1;
	if (a->v) {
		b->v = a->v + r0 * a->in;
		b->m1 = a->m1 ? a->m1 + r0 * a->in : NULL;
		b->m2 = a->m2 ? a->m2 + r0 * a->in : NULL;
		return 0;
	}
	b->v = buf;
	b->m1 = buf + (r1 - r0) * a->in;
	b->m2 = b->m1 + (r1 - r0) * a->in;
	ret = qf_pread_all(a->fd, b->v, len, at);
	if (!ret && moments)
		ret = qf_pread_all(a->fd, b->m1, len, at + n);
	if (!ret && moments)
		ret = qf_pread_all(a->fd, b->m2, len, at + 2 * n);
	return ret;
}

/* ... and back (spilled; in memory they were changed in place). */
static int rows_store(const struct qf_adaround *a, const struct rows *b)
{
	size_t len = (size_t)((b->r1 - b->r0) * a->in) * sizeof(float);
	uint64_t n = (uint64_t)(a->out * a->in) * sizeof(float);
	uint64_t at = a->off + (uint64_t)(b->r0 * a->in) * sizeof(float);
	int ret;

	if (a->v)
		return 0;
	ret = qf_pwrite_all(a->fd, b->v, len, at);
	if (!ret)
		ret = qf_pwrite_all(a->fd, b->m1, len, at + n);
	if (!ret)
		ret = qf_pwrite_all(a->fd, b->m2, len, at + 2 * n);
	return ret;
}

/* The buffer rows_load needs for a spilled state (NULL, ok, in memory). */
static int rows_buf(const struct qf_adaround *a, float **buf)
{
	*buf = NULL;
	if (a->v)
		return 0;
	*buf = malloc(sizeof(float) * 3 * (size_t)(block_rows(a) * a->in));
	return *buf ? 0 : -ENOMEM;
}

/* What fill_rows writes: W~, the learned hard rounding, or RTN's. */
enum fill { FILL_SOFT, FILL_HARD, FILL_NEAREST };

/*
 * Rows b of W~ (FILL_SOFT: s (clamp(base + h(V), 0, maxq) - z)) or of a
 * hard rounding (the code c = clamp(base + (V >= 0)) or, FILL_NEAREST,
 * clamp(rint(w_fp / s) + z), ties to even as RTN) into w (out, in) and
 * the codes into q, each when non-NULL.
 */
QF_HOT static void fill_rows(const struct qf_adaround *a, const struct rows *b,
			     enum fill how, const float *w_fp, uint8_t *q,
			     float *w)
{
	float maxq = (float)((1 << a->bits) - 1);
	int64_t o = b->r0 * a->in;
	float cc[REG_CHUNK];
	int64_t gi, j0, j1, k, n;

	for (gi = b->r0 * a->ngroups; gi < b->r1 * a->ngroups; gi++) {
		float s = a->sc[gi];
		float z = (float)a->zero[gi];

		for (j0 = group_span(a, gi, &j1); j0 < j1; j0 += n) {
			n = j1 - j0 < REG_CHUNK ? j1 - j0 : REG_CHUNK;
			base_run(a, j0, n, cc);
			if (how == FILL_SOFT)
				for (k = 0; k < n; k++)
					cc[k] += rect_sigmoid(b->v[j0 - o + k]);
			else if (how == FILL_HARD)
				for (k = 0; k < n; k++)
					cc[k] += (b->v[j0 - o + k] >= 0);
			else
				for (k = 0; k < n; k++)
					cc[k] = rintf(w_fp[j0 + k] / s) + z;
			for (k = 0; k < n; k++)
				cc[k] = qf_tf_clampf(cc[k], 0, maxq);
			for (k = 0; q && k < n; k++)
				q[j0 + k] = (uint8_t)cc[k];
			for (k = 0; w && k < n; k++)
				w[j0 + k] = s * (cc[k] - z);
		}
	}
}

/* fill_rows over the whole matrix, V in memory or read a block of rows at
 * a time. */
static int fill(const struct qf_adaround *a, enum fill how,
		const float *w_fp, uint8_t *q, float *w)
{
	int64_t r0, nr = block_rows(a);
	struct rows b = { 0, a->out, a->v, a->m1, a->m2 };
	float *buf;
	int ret;

	if (how == FILL_NEAREST || a->v) {
		fill_rows(a, &b, how, w_fp, q, w);
		return 0;
	}
	ret = rows_buf(a, &buf);
	for (r0 = 0; r0 < a->out && !ret; r0 += nr) {
		ret = rows_load(a, r0, r0 + nr < a->out ? r0 + nr : a->out,
				false, buf, &b);
		if (!ret)
			fill_rows(a, &b, how, NULL, q, w);
	}
	free(buf);
	return ret;
}

void qf_adaround_soft(const struct qf_adaround *a, float *w)
{
	struct rows b = { 0, a->out, a->v, a->m1, a->m2 };

	fill_rows(a, &b, FILL_SOFT, NULL, NULL, w);
}

int qf_adaround_soft_any(const struct qf_adaround *a, float *w)
{
	return fill(a, FILL_SOFT, NULL, NULL, w);
}

int qf_adaround_hard(const struct qf_adaround *a, const float *w_fp,
		     bool nearest, uint8_t *q, float *w)
{
	return fill(a, nearest ? FILL_NEAREST : FILL_HARD, w_fp, q, w);
}

/*
 * dL/dV of one weight: dw s h'(V) unless clamped or saturated, plus with
 * reg > 0 the regularizer's term; *regv: the regularizer's value there.
 */
static inline float grad_one(float v, float base, float dw, float s,
			     float maxq, float reg, float beta, bool with_reg,
			     float *regv)
{
	const float zg = QF_ADAROUND_ZETA - QF_ADAROUND_GAMMA;
	float sg = sigmoid_poly(v);
	float hr = sg * zg + QF_ADAROUND_GAMMA;
	float h = qf_tf_clampf(hr, 0, 1);
	float c = base + h;
	/* masks as 0/1 factors: selects would stop the vectorizer */
	float dh = (float)((hr > 0) & (hr < 1)) * sg * (1 - sg) * zg;
	float gr = (float)((c >= 0) & (c <= maxq)) * dw * s * dh;
	union {
		float f;
		uint32_t u;
	} t = { 2 * h - 1 };
	float at = fabsf(t.f);
	float p;

	if (!with_reg)
		return gr;
	/* |t|^(beta - 1), 0^(beta - 1) = tiny (beta > 1) or 1 (beta = 1) */
	p = qf_tf_exp_poly((beta - 1) * log_poly(qf_tf_clampf(at, 1e-30f, 1)));
	*regv = 1 - p * at;
	/* d/dh (1 - |2h - 1|^beta) = -2 beta |t|^(beta - 1) sgn t */
	return gr - reg * 2 * beta * p * (float)(1 - 2 * (int32_t)(t.u >> 31)) *
	       dh;
}

/* gv[j0, j0 + n) of one group (scale s), v[k] the V of j0 + k;
 * with_reg: rv[0, n) too. */
static inline void grad_run(const struct qf_adaround *a, int64_t j0,
			    int64_t n, const float *v, const float *dw,
			    float s, float reg, float beta, bool with_reg,
			    float *gv, float *rv)
{
	float maxq = (float)((1 << a->bits) - 1);
	float bb[REG_CHUNK];
	int64_t j;

	base_run(a, j0, n, bb);
	for (j = 0; j < n; j++)
		gv[j0 + j] = grad_one(v[j], bb[j], dw[j0 + j], s, maxq, reg,
				      beta, with_reg, &rv[j]);
}

/* dL/dV of rows b into gv (out, in) from dw (may be gv); the
 * regularizer's values summed into *regv in the order of the weights. */
QF_HOT static void grad_rows(const struct qf_adaround *a, const struct rows *b,
			     const float *dw, float reg, float beta, float *gv,
			     double *regv)
{
	int64_t o = b->r0 * a->in;
	float rv[REG_CHUNK];
	int64_t gi, j0, j1, k;

	for (gi = b->r0 * a->ngroups; gi < b->r1 * a->ngroups; gi++) {
		float s = a->sc[gi];

		/* vectorized in chunks; their sums in double after */
		for (j0 = group_span(a, gi, &j1); j0 < j1; j0 += REG_CHUNK) {
			int64_t n = j1 - j0 < REG_CHUNK ? j1 - j0 : REG_CHUNK;

			if (!(reg > 0)) {
				grad_run(a, j0, n, b->v + (j0 - o), dw, s, 0,
					 beta, false, gv, rv);
				continue;
			}
			grad_run(a, j0, n, b->v + (j0 - o), dw, s, reg, beta,
				 true, gv, rv);
			for (k = 0; k < n; k++)
				*regv += rv[k];
		}
	}
}

double qf_adaround_grad(const struct qf_adaround *a, const float *dw,
			float reg, float beta, float *gv)
{
	struct rows b = { 0, a->out, a->v, a->m1, a->m2 };
	double regv = 0;

	grad_rows(a, &b, dw, reg, beta, gv, &regv);
	return reg * regv;
}

/* Adam on n weights: v, m1, m2 with gradient gv (torch.optim.Adam). */
QF_HOT static void adam_run(float *v, float *m1, float *m2, const float *gv,
			    int64_t n, float lr, int t)
{
	const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
	float bc1 = (float)(1.0 - pow(b1, t));
	float rbc2 = (float)(1.0 / sqrt(1.0 - pow(b2, t)));
	float step = lr / bc1;
	int64_t i;

	for (i = 0; i < n; i++) {
		float g = gv[i];

		m1[i] = b1 * m1[i] + (1 - b1) * g;
		m2[i] = b2 * m2[i] + (1 - b2) * g * g;
		v[i] -= step * m1[i] / (sqrtf(m2[i]) * rbc2 + eps);
	}
}

/* The moments of a state in memory, zero, at its first step. */
static int moments(struct qf_adaround *a)
{
	size_t n = (size_t)(a->out * a->in);

	if (!a->v || a->m1)
		return 0;
	a->m1 = calloc(n, sizeof(float));
	a->m2 = calloc(n, sizeof(float));
	return a->m1 && a->m2 ? 0 : -ENOMEM;
}

int qf_adaround_adam(struct qf_adaround *a, const float *gv, float lr, int t)
{
	int ret = moments(a);

	if (!ret)
		adam_run(a->v, a->m1, a->m2, gv, a->out * a->in, lr, t);
	return ret;
}

int qf_adaround_spill(struct qf_adaround *a, int fd, uint64_t *off)
{
	uint64_t n = (uint64_t)(a->out * a->in) * sizeof(float);
	int ret;

	/* V; the moments are still zero: the file's hole reads so */
	ret = qf_pwrite_all(fd, a->v, (size_t)n, *off);
	if (!ret && ftruncate(fd, (off_t)(*off + 3 * n)) < 0)
		ret = -errno;
	if (ret)
		return ret;
	free(a->v);
	free(a->m1);
	free(a->m2);
	a->v = a->m1 = a->m2 = NULL;	/* (no moments before a step) */
	a->fd = fd;
	a->off = *off;
	*off += 3 * n;
	return 0;
}

int qf_adaround_step(struct qf_adaround *a, float *dw, float reg, float beta,
		     float lr, int t, float *w, double *regv)
{
	int64_t r0, nr = block_rows(a);
	struct rows b;
	float *buf;
	int ret = moments(a);

	if (!ret)
		ret = rows_buf(a, &buf);
	if (ret)
		return ret;
	if (a->v)	/* one block: the whole matrix */
		nr = a->out;
	*regv = 0;
	for (r0 = 0; r0 < a->out && !ret; r0 += nr) {
		int64_t r1 = r0 + nr < a->out ? r0 + nr : a->out;

		ret = rows_load(a, r0, r1, true, buf, &b);
		if (ret)
			break;
		grad_rows(a, &b, dw, reg, beta, dw, regv);
		adam_run(b.v, b.m1, b.m2, dw + r0 * a->in, (r1 - r0) * a->in,
			 lr, t);
		fill_rows(a, &b, FILL_SOFT, NULL, NULL, w);
		ret = rows_store(a, &b);
	}
	free(buf);
	return ret;
}
