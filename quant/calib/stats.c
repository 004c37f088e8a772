/*
 * stats.c - the statistics of a linear's inputs that the quantizers
 * need: X^T X (a block of rows at a time, so the order of its sums does
 * not depend on how the rows come), per-channel sums, a sample of rows.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"

int qf_lin_stats_init(struct qf_lin_stats *s, int64_t in, bool hessian)
{
	memset(s, 0, sizeof(*s));
	s->in = in;
	s->sum_abs = calloc((size_t)in, sizeof(*s->sum_abs));
	s->sum_sq = calloc((size_t)in, sizeof(*s->sum_sq));
	if (hessian)
		s->h = calloc((size_t)(in * in), sizeof(*s->h));
	if (!s->sum_abs || !s->sum_sq || (hessian && !s->h)) {
		qf_lin_stats_free(s);
		return -ENOMEM;
	}
	return 0;
}

struct sums {
	struct qf_lin_stats *s;
	const float *x;
	int64_t n;
};

/* columns [j0, j1) of the per-channel sums: each in row order, however
 * the columns are split */
static void sums_part(void *arg, int64_t j0, int64_t j1)
{
	const struct sums *a = arg;
	int64_t in = a->s->in, r, j;

	for (r = 0; r < a->n; r++)
		for (j = j0; j < j1; j++) {
			double v = a->x[r * in + j];

			a->s->sum_abs[j] += fabs(v);
			a->s->sum_sq[j] += v * v;
		}
}

void qf_lin_stats_add(struct qf_lin_stats *s, const float *x, int64_t n)
{
	struct sums a = { s, x, n };
	int64_t b = s->block > 0 ? s->block : n, r;

	for (r = 0; s->h && r < n; r += b)	/* upper triangle of H */
		qf_ssyrk_t(s->in, n - r < b ? n - r : b, x + r * s->in, s->in,
			   s->h);
	qf_par_for(sums_part, &a, s->in, (1 << 17) / (n + 1) + 1, 8);
	if (s->xs && s->nxs < s->xs_cap) {
		int64_t k = s->xs_cap - s->nxs < n ? s->xs_cap - s->nxs : n;

		memcpy(s->xs + s->nxs * s->in, x, (size_t)(k * s->in) *
		       sizeof(float));
		s->nxs += k;
	}
	s->n += n;
}

void qf_lin_stats_finish(struct qf_lin_stats *s)
{
	int64_t i, j;

	if (!s->h)
		return;
	for (i = 0; i < s->in; i++)
		for (j = 0; j < i; j++)
			s->h[i * s->in + j] = s->h[j * s->in + i];
}

int qf_lin_stats_sample(struct qf_lin_stats *s, int64_t rows)
{
	if (rows <= 0)
		return 0;
	s->xs = malloc((size_t)(rows * s->in) * sizeof(float));
	s->xs_cap = s->xs ? rows : 0;
	return s->xs ? 0 : -ENOMEM;
}

void qf_lin_stats_free(struct qf_lin_stats *s)
{
	free(s->xs);
	if (!s->h_borrowed)
		free(s->h);
	free(s->sum_abs);
	free(s->sum_sq);
	memset(s, 0, sizeof(*s));
}
