/*
 * mixed_budget.c - the bit budget policy (mixed_b<avg>, see mixed.h): a
 * multiple-choice knapsack over the linears' options, solved by an LP
 * bound, a greedy incumbent and a node-bounded branch and bound.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"

struct step {
	double eff;			/* cost saved per byte */
	double dc;			/* cost change (< 0) */
	uint64_t db;			/* bytes added (> 0) */
	size_t item;
};

struct mck {
	size_t n;
	int np;
	/* per item: efficient options, bytes ascending, cost descending */
	uint64_t *eb;			/* [n * np] */
	double *ec;			/* [n * np] */
	int *ep;			/* [n * np] original option */
	int *ne;			/* [n] */
	size_t *order;			/* [n] branching order */
	size_t *pos;			/* [n] depth of item */
	uint64_t *minb_suf;		/* [n + 1] min bytes of order[k..] */
	double *base_suf;		/* [n + 1] their costs */
	struct step *st;		/* hull steps, eff descending */
	size_t nst;
	uint64_t budget;
	int *cur;			/* [n] efficient index per item */
	int *best;			/* [n] */
	double best_cost;
	uint64_t nodes, max_nodes;
	bool aborted;
};

static int step_cmp(const void *a, const void *b)
{
	const struct step *x = a, *y = b;

	if (x->eff != y->eff)
		return x->eff > y->eff ? -1 : 1;
	if (x->item != y->item)
		return x->item < y->item ? -1 : 1;
	return x->db < y->db ? -1 : x->db > y->db;
}

/*
 * LP relaxation over items at depth >= k with `room` bytes above their
 * smallest options: their base cost plus the greedy hull steps, the
 * last one fractional.
 */
static double lp_bound(const struct mck *m, size_t k, uint64_t room)
{
	double b = m->base_suf[k];
	size_t s;

	for (s = 0; s < m->nst && room; s++) {
		const struct step *x = &m->st[s];

		if (m->pos[x->item] < k)
			continue;
		if (x->db <= room) {
			room -= x->db;
			b += x->dc;
		} else {
			b += x->dc * ((double)room / (double)x->db);
			break;
		}
	}
	return b;
}

static void dfs(struct mck *m, size_t k, uint64_t used, double c)
{
	double bound, tol;
	size_t it;
	int e;

	if (m->aborted)
		return;
	if (++m->nodes > m->max_nodes) {
		m->aborted = true;
		return;
	}
	if (k == m->n) {
		if (c < m->best_cost) {
			m->best_cost = c;
			memcpy(m->best, m->cur, m->n * sizeof(*m->cur));
		}
		return;
	}
	/* callers keep used + minb_suf[k] <= budget */
	bound = c + lp_bound(m, k, m->budget - used - m->minb_suf[k]);
	tol = 1e-12 * fabs(m->best_cost);
	if (bound >= m->best_cost - tol)
		return;
	it = m->order[k];
	for (e = m->ne[it] - 1; e >= 0; e--) {
		uint64_t b = m->eb[it * (size_t)m->np + (size_t)e];

		if (used + b + m->minb_suf[k + 1] > m->budget)
			continue;
		m->cur[it] = e;
		dfs(m, k + 1, used + b,
		    c + m->ec[it * (size_t)m->np + (size_t)e]);
	}
}

struct opt {
	uint64_t b;
	double c;
	int p;
};

static int opt_cmp(const void *a, const void *b)
{
	const struct opt *x = a, *y = b;

	if (x->b != y->b)
		return x->b < y->b ? -1 : 1;
	if (x->c != y->c)
		return x->c < y->c ? -1 : 1;
	return x->p - y->p;
}

struct ranged {
	uint64_t range;			/* largest - smallest bytes */
	size_t i;
};

static int ranged_cmp(const void *a, const void *b)
{
	const struct ranged *x = a, *y = b;

	if (x->range != y->range)
		return x->range > y->range ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Greedy incumbent: the LP's integer part, then best-ratio fills. */
static void greedy(struct mck *m)
{
	size_t np = (size_t)m->np, i, s;
	uint64_t used = m->minb_suf[0], room = m->budget - used;
	double c = m->base_suf[0];

	for (i = 0; i < m->n; i++)
		m->cur[i] = 0;
	for (s = 0; s < m->nst; s++) {
		const struct step *x = &m->st[s];
		size_t it = x->item;
		uint64_t nb = m->eb[it * np + (size_t)m->cur[it]] + x->db;
		int e = m->cur[it];

		if (x->db > room)
			break;
		while (m->eb[it * np + (size_t)e] != nb)
			e++;
		m->cur[it] = e;
		room -= x->db;
		c += x->dc;
	}
	for (;;) {
		double best = 0;
		size_t bi = 0;
		int be = -1, e;

		for (i = 0; i < m->n; i++) {
			uint64_t b0 = m->eb[i * np + (size_t)m->cur[i]];
			double c0 = m->ec[i * np + (size_t)m->cur[i]];

			for (e = m->cur[i] + 1; e < m->ne[i]; e++) {
				uint64_t db = m->eb[i * np + (size_t)e] - b0;
				double r = (c0 - m->ec[i * np + (size_t)e]) /
					(double)db;

				if (db <= room && r > best) {
					best = r;
					bi = i;
					be = e;
				}
			}
		}
		if (be < 0)
			break;
		room -= m->eb[bi * np + (size_t)be] -
			m->eb[bi * np + (size_t)m->cur[bi]];
		c += m->ec[bi * np + (size_t)be] -
			m->ec[bi * np + (size_t)m->cur[bi]];
		m->cur[bi] = be;
	}
	/* recompute exactly in the leaf's summation order */
	c = 0;
	for (i = 0; i < m->n; i++)
		c += m->ec[m->order[i] * np + (size_t)m->cur[m->order[i]]];
	m->best_cost = c;
	memcpy(m->best, m->cur, m->n * sizeof(*m->cur));
}

static void mck_free(struct mck *m)
{
	free(m->eb);
	free(m->ec);
	free(m->ep);
	free(m->ne);
	free(m->order);
	free(m->pos);
	free(m->minb_suf);
	free(m->base_suf);
	free(m->st);
	free(m->cur);
	free(m->best);
}

static int mck_alloc(struct mck *m)
{
	size_t n = m->n, unp = (size_t)m->np;

	m->eb = malloc(n * unp * sizeof(*m->eb));
	m->ec = malloc(n * unp * sizeof(*m->ec));
	m->ep = malloc(n * unp * sizeof(*m->ep));
	m->ne = malloc(n * sizeof(*m->ne));
	m->order = malloc(n * sizeof(*m->order));
	m->pos = malloc(n * sizeof(*m->pos));
	m->minb_suf = malloc((n + 1) * sizeof(*m->minb_suf));
	m->base_suf = malloc((n + 1) * sizeof(*m->base_suf));
	m->st = malloc(n * unp * sizeof(*m->st));
	m->cur = malloc(n * sizeof(*m->cur));
	m->best = malloc(n * sizeof(*m->best));
	if (!m->eb || !m->ec || !m->ep || !m->ne || !m->order || !m->pos ||
	    !m->minb_suf || !m->base_suf || !m->st || !m->cur || !m->best)
		return -ENOMEM;
	return 0;
}

/* Scratch of item_hull(), [np] each. */
struct hull_scratch {
	struct opt *o;
	uint64_t *hb;
	double *hc;
};

/*
 * Item i's efficient options (bytes ascending, cost strictly
 * descending) and the steps of their lower convex hull.
 */
static int item_hull(struct mck *m, size_t i, const uint64_t *bytes,
		     const double *cost, struct hull_scratch *sc)
{
	size_t unp = (size_t)m->np, no = 0, nh = 0, j;
	struct opt *o = sc->o;
	uint64_t *hb = sc->hb;
	double *hc = sc->hc, cmin = INFINITY;
	int e;

	for (e = 0; e < m->np; e++) {
		double c = cost[i * unp + (size_t)e];

		if (isnan(c) || c == INFINITY)
			continue;
		if (c == -INFINITY)
			return -EINVAL;
		o[no].b = bytes[i * unp + (size_t)e];
		o[no].c = c;
		o[no].p = e;
		no++;
	}
	if (!no)
		return QF_ESPEC;
	qsort(o, no, sizeof(*o), opt_cmp);
	m->ne[i] = 0;
	for (j = 0; j < no; j++)
		if (o[j].c < cmin) {
			size_t at = i * unp + (size_t)m->ne[i]++;

			m->eb[at] = o[j].b;
			m->ec[at] = o[j].c;
			m->ep[at] = o[j].p;
			cmin = o[j].c;
		}
	/* lower convex hull: slopes strictly increasing */
	for (e = 0; e < m->ne[i]; e++) {
		uint64_t b = m->eb[i * unp + (size_t)e];
		double c = m->ec[i * unp + (size_t)e];

		while (nh >= 2 &&
		       (hc[nh - 1] - hc[nh - 2]) * (double)(b - hb[nh - 1]) >=
		       (c - hc[nh - 1]) * (double)(hb[nh - 1] - hb[nh - 2]))
			nh--;
		hb[nh] = b;
		hc[nh] = c;
		nh++;
	}
	for (j = 1; j < nh; j++) {
		struct step *x = &m->st[m->nst++];

		x->db = hb[j] - hb[j - 1];
		x->dc = hc[j] - hc[j - 1];
		x->eff = -x->dc / (double)x->db;
		x->item = i;
	}
	return 0;
}

/* Every item's hull steps, sorted by efficiency (descending). */
static int mck_hulls(struct mck *m, const uint64_t *bytes, const double *cost)
{
	size_t unp = (size_t)m->np, i;
	struct hull_scratch sc;
	int ret = 0;

	sc.o = malloc(unp * sizeof(*sc.o));
	sc.hb = malloc(unp * sizeof(*sc.hb));
	sc.hc = malloc(unp * sizeof(*sc.hc));
	if (!sc.o || !sc.hb || !sc.hc)
		ret = -ENOMEM;
	for (i = 0; i < m->n && !ret; i++)
		ret = item_hull(m, i, bytes, cost, &sc);
	free(sc.o);
	free(sc.hb);
	free(sc.hc);
	if (!ret)
		qsort(m->st, m->nst, sizeof(*m->st), step_cmp);
	return ret;
}

/*
 * The branching order (the items with the widest byte range first), the
 * depth of each item and the suffix sums of the smallest options.
 */
static int mck_order(struct mck *m)
{
	size_t n = m->n, unp = (size_t)m->np, i, k;
	struct ranged *rg = malloc(n * sizeof(*rg));

	if (!rg)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		rg[i].range = m->eb[i * unp + (size_t)m->ne[i] - 1] -
			m->eb[i * unp];
		rg[i].i = i;
	}
	qsort(rg, n, sizeof(*rg), ranged_cmp);
	for (i = 0; i < n; i++)
		m->order[i] = rg[i].i;
	free(rg);
	m->minb_suf[n] = 0;
	m->base_suf[n] = 0;
	for (k = n; k-- > 0;) {
		size_t it = m->order[k];

		m->pos[it] = k;
		m->minb_suf[k] = m->minb_suf[k + 1] + m->eb[it * unp];
		m->base_suf[k] = m->base_suf[k + 1] + m->ec[it * unp];
	}
	return 0;
}

int qf_mixed_budget(size_t n, int np, const uint64_t *params,
		    const uint64_t *bytes, const double *cost,
		    int avg_bits_x100, uint64_t max_nodes, int *choice,
		    struct qf_mixed_budget_res *res)
{
	struct mck m = { 0 };
	uint64_t nparams = 0;
	size_t i;
	int ret;

	memset(res, 0, sizeof(*res));
	if (np < 1 || avg_bits_x100 <= 0)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		if (nparams > UINT64_MAX / 3200 - params[i])
			return -EINVAL;
		nparams += params[i];
	}
	m.n = n;
	m.np = np;
	m.max_nodes = max_nodes;
	m.budget = (uint64_t)avg_bits_x100 * nparams / 800;
	res->budget_bytes = m.budget;
	if (!n) {
		res->optimal = true;
		return 0;
	}
	/* 1. efficient options and hull steps of every item */
	ret = mck_alloc(&m);
	if (!ret)
		ret = mck_hulls(&m, bytes, cost);
	if (!ret)
		ret = mck_order(&m);
	if (!ret && m.minb_suf[0] > m.budget)
		ret = QF_ESPEC;
	if (ret)
		goto out_free;
	/* 2. LP bound and the greedy incumbent */
	res->bound = lp_bound(&m, 0, m.budget - m.minb_suf[0]);
	greedy(&m);
	/* 3. branch and bound */
	dfs(&m, 0, 0, 0);
	res->nodes = m.nodes;
	res->optimal = !m.aborted;
	res->cost = m.best_cost;
	if (res->optimal || res->bound > res->cost)
		res->bound = res->cost;
	for (i = 0; i < n; i++) {
		size_t at = i * (size_t)np + (size_t)m.best[i];

		choice[i] = m.ep[at];
		res->bytes += m.eb[at];
	}
out_free:
	mck_free(&m);
	return ret;
}
