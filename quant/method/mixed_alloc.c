/*
 * mixed_alloc.c - widths of a measured mixed-precision variant from its
 * sensitivity tables (mixed_alloc.h).
 *
 * The knapsack's cost of a unit at an option is its measured cost
 * (from the KL divergence fs/job_mixed.c measures), at least 0 and
 * never lower than an option at least as fine (as many bits or more,
 * groups as small or smaller): measurement noise would otherwise buy a
 * coarser grid for free.  An option the unit's shapes cannot be packed
 * at costs +inf (budget) or falls back to 16 (ratios).  Everything is in
 * the order fs/job.c did it, so the chosen widths and the JSON are the
 * same to the last bit.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mixed_alloc.h"

const struct qf_mixed_opt qf_mixed_opts[QF_MIXED_NW] = {
	{ 2, 128 }, { 2, 32 }, { 3, 128 }, { 3, 32 },
	{ 4, 128 }, { 4, 32 }, { 8, 128 }, { 16, 0 },
};

#define NW QF_MIXED_NW

int qf_mixed_unit_of(enum qf_tf_linear k)
{
	return k <= QF_TF_V ? 0 : k == QF_TF_O ? 1 : k <= QF_TF_UP ? 2 : 3;
}

int qf_mixed_alloc_bits(void *arg, const char *name, int *group)
{
	const struct qf_mixed_alloc *a = arg;
	size_t i;

	for (i = 0; i < a->n; i++)
		if (!strcmp(a->names[i], name)) {
			if (group)
				*group = a->group[i];
			return a->bits[i];
		}
	return 16;
}

void qf_mixed_alloc_free(struct qf_mixed_alloc *a)
{
	size_t i;

	if (!a)
		return;
	for (i = 0; i < a->n; i++)
		free(a->names[i]);
	free(a->names);
	free(a->bits);
	free(a->group);
	free(a->json);
	free(a);
}

/* GPTQ checkpoint bytes of a linear at option o (16: the source's). */
static double ckpt_bytes(const struct qf_mixed_linear *w,
			 const struct qf_mixed_opt *o)
{
	int64_t out = w->out, in = w->in;
	int64_t ng = qf_ngroups(in, o->group);
	int pb = qf_pack_bits(o->bits);

	if (o->bits >= 16)
		return (double)w->src_bytes;
	if (!qf_gptq_packable(pb, in, out))
		return -1;
	return (double)out * in * pb / 8 + (double)ng * out * pb / 8 +
	       (double)ng * out * 2 + (double)in * 4;
}

/* The per-unit tables of one allocation. */
struct units {
	size_t nu;			/* nlayers * QF_MIXED_UNITS */
	int *unit;			/* [n]: each linear's unit */
	uint64_t *up;			/* [nu]: parameters */
	double *ubytes;			/* [nu][NW]: bytes, -1 not packable */
	double *uerr;			/* [nu][NW]: summed output errors */
	double *ucost;			/* [nu][NW]: the knapsack's cost */
	uint64_t *ub;			/* [nu][NW]: ubytes for the knapsack */
	int *ubits;			/* [nu]: the chosen width */
	int *choice;			/* [nu]: its option */
	double *uc;			/* [nu]: the chosen width's cost */
	double *ue;			/* [nu]: ... and output error */
	struct qf_mixed_budget_res br;
};

static void units_free(struct units *u)
{
	free(u->unit);
	free(u->up);
	free(u->ubytes);
	free(u->uerr);
	free(u->ucost);
	free(u->ub);
	free(u->ubits);
	free(u->choice);
	free(u->uc);
	free(u->ue);
}

static int units_init(struct units *u, size_t n, size_t nu)
{
	memset(u, 0, sizeof(*u));
	u->nu = nu;
	u->unit = calloc(n + 1, sizeof(*u->unit));
	u->up = calloc(nu + 1, sizeof(*u->up));
	u->ubytes = calloc(nu * NW + 1, sizeof(*u->ubytes));
	u->uerr = calloc(nu * NW + 1, sizeof(*u->uerr));
	u->ucost = calloc(nu * NW + 1, sizeof(*u->ucost));
	u->ub = calloc(nu * NW + 1, sizeof(*u->ub));
	u->ubits = calloc(nu + 1, sizeof(*u->ubits));
	u->choice = calloc(nu + 1, sizeof(*u->choice));
	u->uc = calloc(nu + 1, sizeof(*u->uc));
	u->ue = calloc(nu + 1, sizeof(*u->ue));
	if (!u->unit || !u->up || !u->ubytes || !u->uerr || !u->ucost ||
	    !u->ub || !u->ubits || !u->choice || !u->uc || !u->ue)
		return -ENOMEM;
	return 0;
}

/* Is option q at least as fine as p (p itself too)? */
static bool as_fine(int q, int p)
{
	const struct qf_mixed_opt *a = &qf_mixed_opts[q], *b = &qf_mixed_opts[p];

	return a->bits >= b->bits && (a->bits >= 16 || a->group <= b->group);
}

/* Per unit: summed bytes, parameters and output errors; then the
 * monotone costs. */
static void units_sum(const struct qf_mixed_alloc_in *in, struct units *u)
{
	size_t i, x;
	int p;

	for (i = 0; i < in->n; i++) {
		const struct qf_mixed_linear *w = &in->lin[i];

		u->unit[i] = w->layer * QF_MIXED_UNITS +
			     qf_mixed_unit_of(w->kind);
		u->up[u->unit[i]] += w->params;
		for (p = 0; p < NW; p++) {
			double b = ckpt_bytes(w, &qf_mixed_opts[p]);

			x = (size_t)u->unit[i] * NW + p;
			if (b < 0 || u->ubytes[x] < 0)
				u->ubytes[x] = -1;
			else
				u->ubytes[x] += b;
			u->uerr[x] += in->sens[i * QF_MIXED_SENS_REC + p];
		}
	}
	for (i = 0; i < u->nu; i++)
		for (p = 0; p < NW; p++) {
			double c = 0;
			int q;

			for (q = 0; q < NW; q++) {
				double v = in->uloss[i * NW + (size_t)q];

				if (as_fine(q, p) && v > c)
					c = v;
			}
			u->ucost[i * NW + (size_t)p] = c;
		}
	for (x = 0; x < u->nu * NW; x++)
		if (u->ubytes[x] < 0)
			u->ucost[x] = INFINITY;
	for (x = 0; x < u->nu * NW; x++)
		u->ub[x] = u->ubytes[x] < 0 ? UINT64_MAX / 4 :
			   (uint64_t)u->ubytes[x];
}

/* The budget policy: the knapsack over the units. */
static int choose_budget(const struct qf_mixed_alloc_in *in, struct units *u)
{
	double least = 0, np_ = 0;
	size_t i;
	int p, ret;

	ret = qf_mixed_budget(u->nu, NW, u->up, u->ub, u->ucost,
			      in->avg_bits_x100, QF_MIXED_MAX_NODES, u->choice,
			      &u->br);
	if (!ret)
		return 0;
	/* what the narrowest packable widths need */
	for (i = 0; i < u->nu; i++) {
		double m = INFINITY;

		for (p = 0; p < NW; p++)
			if (u->ubytes[i * NW + p] >= 0 &&
			    u->ubytes[i * NW + p] < m)
				m = u->ubytes[i * NW + p];
		least += u->up[i] ? m : 0;
		np_ += (double)u->up[i];
	}
	qf_err("%s: %s: no allocation fits %.2f bits per "
	       "parameter; the narrowest widths the linears' "
	       "shapes can be packed at need %.2f", in->model,
	       in->variant, in->avg_bits_x100 / 100.0,
	       np_ > 0 ? 8 * least / np_ : 0);
	return ret;
}

/* The ratio policy: units ranked by their linears' mean importance. */
static int choose_ratio(const struct qf_mixed_alloc_in *in, struct units *u)
{
	struct qf_mixed_signals *sig = calloc(in->n + 1, sizeof(*sig));
	double *imp = calloc(in->n + 1, sizeof(*imp));
	double *uimp = calloc(u->nu + 1, sizeof(*uimp));
	double *cnt = calloc(u->nu + 1, sizeof(*cnt));
	size_t i;
	int p, ret;

	ret = sig && imp && uimp && cnt ? 0 : -ENOMEM;
	for (i = 0; i < in->n && !ret; i++) {
		sig[i].act = in->sens[i * QF_MIXED_SENS_REC + NW + 1];
		sig[i].weight = in->sens[i * QF_MIXED_SENS_REC + NW + 2];
	}
	if (!ret)
		ret = qf_mixed_importance(sig, in->n, imp);
	for (i = 0; i < in->n && !ret; i++) {
		uimp[u->unit[i]] += imp[i];
		cnt[u->unit[i]] += 1;
	}
	for (i = 0; i < u->nu && !ret; i++)
		uimp[i] = cnt[i] > 0 ? uimp[i] / cnt[i] : -INFINITY;
	if (!ret)
		ret = qf_mixed_ratio_assign(in->ratio, uimp, u->nu, u->ubits);
	/* the width's option at group 128 (-1: none, a 6-bit grid); a
	 * unit whose linears cannot hold it keeps 16 (the last option) */
	for (i = 0; i < u->nu && !ret; i++) {
		u->choice[i] = -1;
		for (p = 0; p < NW; p++)
			if (qf_mixed_opts[p].bits == u->ubits[i] &&
			    (u->ubits[i] >= 16 ||
			     qf_mixed_opts[p].group == QF_MIXED_GROUP))
				u->choice[i] = u->ubytes[i * NW + p] < 0 ?
					       NW - 1 : p;
	}
	free(sig);
	free(imp);
	free(uimp);
	free(cnt);
	return ret;
}

static void add_numbers(cJSON *o, const char *name, const double *v,
			size_t n)
{
	cJSON *arr = cJSON_AddArrayToObject(o, name);
	size_t i;

	for (i = 0; i < n; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(v[i]));
}

static void alloc_json(struct qf_mixed_alloc *a,
		       const struct qf_mixed_alloc_in *in,
		       const struct units *u)
{
	cJSON *o = cJSON_CreateObject(), *arr;
	bool budget = in->budget;
	size_t i;

	cJSON_AddStringToObject(o, "policy", budget ? "budget" : "ratio");
	if (budget) {
		cJSON_AddNumberToObject(o, "avg_bits",
					in->avg_bits_x100 / 100.0);
		cJSON_AddStringToObject(o, "algorithm",
			"multiple-choice knapsack: minimize the sum of the "
			"units' measured costs subject to "
			"8 * stored bytes <= avg_bits * parameters of the "
			"quantizable linears; LP bound, then branch and bound");
		cJSON_AddNumberToObject(o, "budget_bytes",
					(double)u->br.budget_bytes);
		cJSON_AddNumberToObject(o, "bytes", (double)u->br.bytes);
		cJSON_AddNumberToObject(o, "objective", u->br.cost);
		cJSON_AddNumberToObject(o, "lower_bound", u->br.bound);
		cJSON_AddBoolToObject(o, "optimal", u->br.optimal);
	} else {
		cJSON_AddStringToObject(o, "algorithm",
			"the seed's ratio policy over units ranked by "
			"importance 0.3 z(mean x^2) + 0.2 z(mean |W|): top 20 % "
			"16 bits, bottom 40 % 4 bits, the rest 8 bits");
	}
	cJSON_AddStringToObject(o, "units",
		"per decoder layer: {q,k,v}, {o}, {gate,up}, {down} share a "
		"width and group size (fused by loaders)");
	cJSON_AddStringToObject(o, "sensitivity",
		"unit_cost: KL(u) * E(u, o) / E_rtn(u), KL(u) the mean "
		"KL divergence (nats) from the unquantized model's next-token "
		"distribution over every calibration token (at most 8192) when "
		"only that unit is rounded to nearest at 3 bits (group 128), "
		"the rest fp32, E_rtn(u) its linears' summed squared output "
		"error tr(dW H dW^T) in that trial, E(u, o) the same with GPTQ "
		"at option o (width, group size); "
		"unit_output_error: the sum of its linears' relative output "
		"errors tr(dW H dW^T) / tr(W H W^T) with GPTQ at the option "
		"chosen, H = X^T X on the calibration set through the "
		"unquantized model");
	cJSON_AddStringToObject(o, "calibration_set", in->calib_key);
	arr = cJSON_AddArrayToObject(o, "unit_bits");
	for (i = 0; i < u->nu; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(u->ubits[i]));
	arr = cJSON_AddArrayToObject(o, "unit_group");
	for (i = 0; i < u->nu; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(
			u->choice[i] < 0 ? QF_MIXED_GROUP :
			qf_mixed_opts[u->choice[i]].group));
	add_numbers(o, "unit_cost", u->uc, u->nu);
	add_numbers(o, "unit_output_error", u->ue, u->nu);
	a->json = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
}

/* The chosen widths per linear, and the JSON. */
static int alloc_fill(struct qf_mixed_alloc *a,
		      const struct qf_mixed_alloc_in *in, struct units *u)
{
	size_t i;

	/* the chosen option's width, cost and output error of each unit
	 * (a 6-bit grid of the ratios has none: 0, 0) */
	for (i = 0; i < u->nu; i++) {
		int p = u->choice[i];

		if (p < 0)
			continue;
		u->ubits[i] = qf_mixed_opts[p].bits;
		u->uc[i] = u->ucost[i * NW + (size_t)p];
		u->ue[i] = u->uerr[i * NW + (size_t)p];
	}
	a->names = calloc(in->n + 1, sizeof(*a->names));
	a->bits = calloc(in->n + 1, sizeof(*a->bits));
	a->group = calloc(in->n + 1, sizeof(*a->group));
	if (!a->names || !a->bits || !a->group)
		return -ENOMEM;
	for (i = 0; i < in->n; i++) {
		int p = u->choice[u->unit[i]];

		a->names[i] = strdup(in->lin[i].name);
		a->bits[i] = u->ubits[u->unit[i]];
		a->group[i] = p < 0 ? QF_MIXED_GROUP : qf_mixed_opts[p].group;
		if (!a->names[i])
			return -ENOMEM;
		a->n = i + 1;
	}
	alloc_json(a, in, u);
	return a->json ? 0 : -ENOMEM;
}

int qf_mixed_alloc_run(const struct qf_mixed_alloc_in *in,
		       struct qf_mixed_alloc **out)
{
	struct qf_mixed_alloc *a = calloc(1, sizeof(*a));
	struct units u;
	int ret;

	*out = NULL;
	if (!a)
		return -ENOMEM;
	if (in->nlayers < 0) {
		free(a);
		return -EINVAL;
	}
	ret = units_init(&u, in->n, (size_t)in->nlayers * QF_MIXED_UNITS);
	if (ret < 0)
		goto out_free;
	units_sum(in, &u);
	if (in->budget)
		ret = choose_budget(in, &u);
	else
		ret = choose_ratio(in, &u);
	if (!ret)
		ret = alloc_fill(a, in, &u);
out_free:
	units_free(&u);
	if (ret < 0) {
		qf_mixed_alloc_free(a);
		return ret;
	}
	*out = a;
	return 0;
}
