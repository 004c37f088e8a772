/*
 * job_mixed.c - the sensitivity tables of a measured mixed-precision
 * variant (mixed_dyn, mixed_b<avg>): per linear its relative output
 * error at each candidate width and its importance signals, per unit
 * the cost of each width, measured through the unquantized model on the
 * variant's calibration set and cached under the model, the set and the
 * backend.  The allocation itself is quant's (quant/mixed_alloc.c).
 *
 * A unit's cost at option o (width, group size) is
 * KL(u) * E(u, o) / E_rtn(u): the mean KL divergence from the source's
 * next-token distribution with only that unit rounded to nearest at 3
 * bits (group 128), over every token of the calibration set (up to
 * KL_TOKENS), scaled by the unit's absolute squared output error
 * E = sum over its linears of tr(dW H dW^T) with GPTQ at o (what the
 * variant's job quantizes with) relative to E_rtn, round to nearest's
 * in the trial.  One trial per unit: the KL of a small perturbation is
 * quadratic in the output error, so the ratio carries it to the other
 * options and to GPTQ's rounding, and the trials measured at one width
 * on all tokens instead of four on a quarter of them are what makes the
 * ranking stable (issue #24).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job_i.h"
#include "mixed_alloc.h"

_Static_assert(sizeof(((struct qf_mixed_alloc *)0)->calib_vid) ==
	       QF_CACHE_VID, "an allocation's calib_vid is a cache vid");

/* Group gi's sensitivity record from its weights w and statistics. */
static int sens_one(struct job *j, int gi, const float *w,
		    const struct qf_lin_stats *st)
{
	const struct qf_vgroup *g;
	struct qf_mixed_signals sig;
	int bits[QF_MIXED_NW], group[QF_MIXED_NW], p;
	double *rec;
	int ret;

	if (gi < 0)
		return 0;
	g = &j->var->v->g[gi];
	rec = j->sens + (size_t)gi * QF_MIXED_SENS_REC;
	for (p = 0; p < QF_MIXED_NW; p++) {
		bits[p] = qf_mixed_opts[p].bits;
		group[p] = qf_mixed_opts[p].group;
	}
	ret = qf_mixed_sensitivity_gptq(w, g->w->t->shape[0],
					g->w->t->shape[1], st->h, bits, group,
					QF_MIXED_NW, (float)j->var->ci.damp,
					rec, &j->energy[gi]);
	if (ret >= 0)
		ret = qf_mixed_sensitivity(w, g->w->t->shape[0],
					   g->w->t->shape[1], st->h,
					   &bits[QF_MIXED_REF], 1,
					   QF_MIXED_GROUP, false,
					   &rec[QF_MIXED_SENS_RTN]);
	if (ret < 0)
		return ret;
	qf_mixed_signals_of(w, g->w->t->shape[0], g->w->t->shape[1], st,
			    &sig);
	rec[QF_MIXED_SENS_RTN + 1] = sig.act;
	rec[QF_MIXED_SENS_RTN + 2] = sig.weight;
	return 0;
}

/*
 * The measurement runs in the lookup that needs it: it stops when the
 * mount is stopping, and also when that request is interrupted or the
 * session is ending (SIGTERM), since unmounting waits for the request.
 */
static bool stop_now(struct job *j)
{
	return qf_fs_stopping(j->fs) ||
	       (j->fs->req && j->fs->req->interrupted(j->fs));
}

/* Sensitivities of the layer's linears; the weights stay as they are. */
static int cb_sens(void *arg, int l, struct qf_tf_layer *ly,
		   const enum qf_tf_linear *lin, int n,
		   struct qf_lin_stats *stats)
{
	struct job *j = arg;
	int i, ret = 0;

	if (stop_now(j))
		return -EINTR;
	for (i = 0; i < n && !ret; i++)
		ret = sens_one(j, j->var->job->lin_group[l * QF_TF_NLINEAR +
							 lin[i]],
			       ly->w[lin[i]], &stats[lin[i]]);
	return ret;
}

/*
 * MoE: expert e's gate and up, or down, on the tokens routed to it
 * (calib.c's fallback below a linear's input width).
 */
static int cb_sens_expert(void *arg, int l, int e, enum qf_moe_linear k,
			  float **w, struct qf_lin_stats *st, int64_t routed)
{
	struct job *j = arg;
	int i, n = k == QF_MOE_GATE ? 2 : 1, ret = 0;

	(void)routed;
	if (stop_now(j))
		return -EINTR;
	for (i = 0; i < n && !ret; i++) {
		int lin = k == QF_MOE_GATE ? i : QF_MOE_DOWN;

		ret = sens_one(j, qf_job_exp_group(j->var->job, l, e, lin),
			       w[lin], &st[i]);
	}
	return ret;
}

static int sens_done(void *arg, int l, const float *x, int64_t ntok,
		     double seconds)
{
	struct job *j = arg;

	(void)x, (void)ntok;
	qf_info("%s: mixed precision: sensitivities of layer %d/%d in %.2f s",
		j->var->mdl->name, l + 1, j->var->job->nlayers, seconds);
	return 0;
}

static int loss_done(void *arg, int l, double seconds)
{
	struct job *j = arg;

	if (l >= 0)		/* -1: between trials, only a chance to stop */
		qf_info("%s: mixed precision: KL divergence of each unit of "
			"layer %d/%d in %.2f s", j->var->mdl->name, l + 1,
			j->var->job->nlayers, seconds);
	return stop_now(j) ? -EINTR : 0;
}

#define KL_TOKENS 8192		/* most calibration tokens the KL runs on */

static struct qf_mixed_linear *probe_linears(const struct qf_var *probe);

/*
 * The sequences of cs the KL runs on: all when they hold at most
 * KL_TOKENS tokens, else KL_TOKENS / seqlen of them spread evenly (at
 * least one); *ids is then a new array (else cs's own).
 */
static int kl_ids(const struct qf_calib *cs, int32_t **ids, int *nseq,
		  bool *own)
{
	int n = KL_TOKENS / cs->seqlen, i;

	*own = false;
	*ids = cs->ids;
	*nseq = cs->nseq;
	n = n < 1 ? 1 : n;
	if (cs->nseq <= n)
		return 0;
	*ids = malloc((size_t)n * (size_t)cs->seqlen * sizeof(**ids));
	if (!*ids)
		return -ENOMEM;
	for (i = 0; i < n; i++)
		memcpy(*ids + (size_t)i * (size_t)cs->seqlen,
		       cs->ids + (size_t)((int64_t)i * cs->nseq / n) *
				 (size_t)cs->seqlen,
		       (size_t)cs->seqlen * sizeof(**ids));
	*own = true;
	*nseq = n;
	return 0;
}

/*
 * uloss [units][QF_MIXED_NW] from the KL of each unit's trial (kl
 * [units]) and its linears' absolute output errors sens * energy: with
 * GPTQ at each option over round to nearest's in the trial.
 */
static int unit_costs(const struct qf_var *probe, const double *sens,
		      const double *energy, const double *kl, double *uloss)
{
	size_t nu = (size_t)probe->job->nlayers * QF_MIXED_UNITS, i;
	struct qf_mixed_linear *lin = probe_linears(probe);
	double *e = calloc(nu * QF_MIXED_NW + 1, sizeof(*e));
	double *ref = calloc(nu + 1, sizeof(*ref));
	int p, ret = lin && e && ref ? 0 : -ENOMEM;

	for (i = 0; i < probe->v->ng && !ret; i++) {
		size_t u = (size_t)lin[i].layer * QF_MIXED_UNITS +
			   (size_t)qf_mixed_unit_of(lin[i].kind);
		const double *rec = sens + i * QF_MIXED_SENS_REC;

		for (p = 0; p < QF_MIXED_NW; p++)
			e[u * QF_MIXED_NW + p] += rec[p] * energy[i];
		ref[u] += rec[QF_MIXED_SENS_RTN] * energy[i];
	}
	for (i = 0; i < nu && !ret; i++)
		for (p = 0; p < QF_MIXED_NW; p++)
			uloss[i * QF_MIXED_NW + p] = ref[i] > 0 ?
				kl[i] * e[i * QF_MIXED_NW + p] / ref[i] : 0;
	free(lin);
	free(e);
	free(ref);
	return ret;
}

/* The KL of every unit's trial, then the cost table into uloss. */
static int kl_costs(struct job *j, const struct qf_calib *cs, double *uloss)
{
	const struct qf_var *probe = j->var;
	size_t nu = (size_t)probe->job->nlayers * QF_MIXED_UNITS;
	double *kl = calloc(nu + 1, sizeof(*kl));
	int unit_of[QF_TF_NLINEAR], k, nseq, ret;
	int width = qf_mixed_opts[QF_MIXED_REF].bits;
	int32_t *ids = NULL;
	bool own = false;

	for (k = 0; k < QF_TF_NLINEAR; k++)
		unit_of[k] = qf_mixed_unit_of((enum qf_tf_linear)k);
	ret = kl ? kl_ids(cs, &ids, &nseq, &own) : -ENOMEM;
	if (!ret)
		ret = qf_mixed_kl_table(probe->mdl->m, &j->c, ids, nseq,
					cs->seqlen, unit_of, QF_MIXED_UNITS,
					&width, 1, QF_MIXED_GROUP, kl,
					loss_done, j);
	if (!ret)
		ret = unit_costs(probe, j->sens, j->energy, kl, uloss);
	if (own)
		free(ids);
	free(kl);
	return ret;
}

/*
 * The sensitivity tables, from the cache or measured and stored: per
 * linear its relative output errors and signals (sens), per unit the
 * loss increase (uloss [nlayers * 4][QF_MIXED_NW]).
 */
static int mixed_table(struct qf_fs *fs, struct qf_var *probe,
		       double *sens, double *uloss)
{
	size_t want = probe->v->ng * QF_MIXED_SENS_REC * sizeof(double);
	size_t uwant = (size_t)probe->job->nlayers * QF_MIXED_UNITS * QF_MIXED_NW *
		       sizeof(double);
	struct qf_cache_item its[2];
	const char *parts[4];
	char calib_hex[33];
	uint8_t vid[QF_CACHE_VID];
	struct qf_cache_txn *txn;
	struct qf_calib cs = { 0 };
	struct job j = { .fs = fs, .var = probe, .sens = sens };
	struct qf_calib_ops ops = {
		.hessian = true,
		.whole_layer = true,
		.quantize = cb_sens,
		.layer_done = sens_done,
		.mem_bytes = (int64_t)fs->o.calib_mem,
		.spill_dir = fs->cache_dir,
		.unchanged = true,	/* cb_sens measures, changes nothing */
	};
	const void *p;
	size_t len;
	bool hit = false;
	double t0 = qf_now();
	int ret;

	qf_hex(probe->calib_vid, QF_CACHE_VID, calib_hex);
	parts[0] = "quantfs-mixed-sensitivity-v4";
	parts[1] = probe->mdl->m->fp_hex;
	parts[2] = calib_hex;
	parts[3] = qf_backend_name(fs->backend);
	qf_cache_vid(parts, 4, vid);
	if (qf_cache_read_begin(fs->cache, &txn) == 0) {
		if (qf_cache_get(txn, vid, "__sens__", &p, &len) == 0 &&
		    len == want) {
			memcpy(sens, p, len);
			hit = true;
		}
		if (hit && qf_cache_get(txn, vid, "__uloss__", &p, &len) == 0 &&
		    len == uwant)
			memcpy(uloss, p, len);
		else
			hit = false;
		qf_cache_read_end(txn);
	}
	if (hit)
		return 0;
	qf_info("%s: mixed precision: measuring the sensitivity of %zu "
		"linears to %d precisions", probe->mdl->name, probe->v->ng,
		QF_MIXED_NW);
	ret = qf_tf_config_parse(probe->mdl->m, &j.c);
	if (!ret && j.c.moe) {
		/* the pass that routes: each expert on its tokens (the
		 * weights stay, so sequential changes nothing) */
		ops.sequential = true;
		ops.whole_layer = false;
		ops.quantize_expert = cb_sens_expert;
	}
	if (!ret && !(j.energy = calloc(probe->v->ng + 1, sizeof(double))))
		ret = -ENOMEM;
	if (!ret)
		ret = qf_job_calib_set(&j, &cs);
	if (!ret)
		ret = qf_calib_run(probe->mdl->m, &j.c, &cs, &ops, &j);
	if (!ret)
		ret = kl_costs(&j, &cs, uloss);
	qf_calib_free(&cs);
	free(j.energy);
	if (ret < 0)
		return ret;
	its[0] = (struct qf_cache_item){ "__sens__", sens, want };
	its[1] = (struct qf_cache_item){ "__uloss__", uloss, uwant };
	ret = qf_fs_cache_put(fs, vid, its, 2);
	qf_info("%s: mixed precision: sensitivities measured in %.1f s",
		probe->mdl->name, qf_now() - t0);
	return ret;
}

/*
 * A stand-in variant for measuring: every linear the 8-bit container can
 * hold, spec's calibration set, the layer maps; logs name spec.
 */
static int probe_new(struct qf_fs *fs, struct qf_mdl *mdl,
		     const struct qf_spec *spec, struct qf_var **out)
{
	struct qf_spec s8 = { .method = QF_METHOD_RTN, .bits = 8,
			      .group = QF_MIXED_GROUP };
	struct qf_var *probe = calloc(1, sizeof(*probe));
	int ret;

	*out = probe;
	if (!probe)
		return -ENOMEM;
	ret = qf_src_fp(fs, mdl, true);	/* the ids below name it */
	if (ret < 0)
		return ret;
	probe->mdl = mdl;
	memcpy(s8.calib, spec->calib, sizeof(s8.calib));
	ret = qf_variant_init(mdl->m, &s8, &probe->v);
	if (!ret) {
		qf_spec_print(spec, probe->v->name, sizeof(probe->v->name));
		ret = qf_job_setup(fs, probe);
	}
	return ret;
}

static void probe_free(struct qf_var *probe)
{
	if (!probe)
		return;
	qf_job_free(probe);
	qf_variant_free(probe->v);
	free(probe);
}

/* probe's tables (sens, uloss as mixed_table) into new arrays. */
static int probe_tables(struct qf_fs *fs, struct qf_var *probe,
			double **sens, double **uloss)
{
	*sens = calloc(probe->v->ng * QF_MIXED_SENS_REC + 1, sizeof(**sens));
	*uloss = calloc((size_t)probe->job->nlayers * QF_MIXED_UNITS *
			QF_MIXED_NW + 1, sizeof(**uloss));
	return *sens && *uloss ? mixed_table(fs, probe, *sens, *uloss) :
				 -ENOMEM;
}

int qf_job_mixed_prepare(struct qf_fs *fs, struct qf_mdl *mdl,
			 const struct qf_spec *spec)
{
	struct qf_var *probe = NULL;
	double *sens = NULL, *uloss = NULL;
	int ret;

	pthread_mutex_lock(&fs->sens_lock);
	ret = probe_new(fs, mdl, spec, &probe);
	if (!ret)
		ret = probe_tables(fs, probe, &sens, &uloss);
	pthread_mutex_unlock(&fs->sens_lock);
	free(sens);
	free(uloss);
	probe_free(probe);
	return ret;
}

/* Group gi of layer l as an expert's linear: gate, up or down (the
 * units of the layer's experts), else QF_TF_NLINEAR. */
static int expert_kind(const struct qf_job *jb, int l, int gi)
{
	static const enum qf_tf_linear kind[QF_MOE_NLINEAR] = {
		QF_TF_GATE, QF_TF_UP, QF_TF_DOWN,
	};
	int e, k;

	for (e = 0; e < jb->nexp; e++)
		for (k = 0; k < QF_MOE_NLINEAR; k++)
			if (qf_job_exp_group(jb, l, e, k) == gi)
				return kind[k];
	return QF_TF_NLINEAR;
}

/* The quantizable linears of probe, for the allocation. */
static struct qf_mixed_linear *probe_linears(const struct qf_var *probe)
{
	struct qf_mixed_linear *lin = calloc(probe->v->ng + 1, sizeof(*lin));
	size_t i;

	for (i = 0; lin && i < probe->v->ng; i++) {
		const struct qf_model_tensor *w = probe->v->g[i].w;
		int l = probe->job->group_layer[i], k;

		for (k = 0; k < QF_TF_NLINEAR; k++)
			if (probe->job->lin_group[l * QF_TF_NLINEAR + k] == (int)i)
				break;
		if (k == QF_TF_NLINEAR)	/* an expert's: its MLP unit */
			k = expert_kind(probe->job, l, (int)i);
		lin[i] = (struct qf_mixed_linear){
			.name = w->name,
			.layer = l,
			.kind = (enum qf_tf_linear)k,
			.out = w->t->shape[0],
			.in = w->t->shape[1],
			.params = (uint64_t)qf_st_numel(w->t),
			.src_bytes = w->t->nbytes,
		};
	}
	return lin;
}

int qf_job_mixed_alloc(struct qf_fs *fs, struct qf_mdl *mdl,
		       const struct qf_spec *spec, struct qf_mixed_alloc **out)
{
	struct qf_var *probe = NULL;
	struct qf_mixed_alloc_in in;
	struct qf_mixed_linear *lin = NULL;
	double *sens = NULL, *uloss = NULL;
	int ret;

	*out = NULL;
	ret = probe_new(fs, mdl, spec, &probe);
	if (!ret)
		ret = probe_tables(fs, probe, &sens, &uloss);
	if (!ret && !(lin = probe_linears(probe)))
		ret = -ENOMEM;
	if (ret < 0)
		goto out_free;
	in = (struct qf_mixed_alloc_in){
		.lin = lin,
		.n = probe->v->ng,
		.nlayers = probe->job->nlayers,
		.sens = sens,
		.uloss = uloss,
		.budget = spec->method == QF_METHOD_MIXED_BUDGET,
		.avg_bits_x100 = spec->avg_bits_x100,
		.ratio = &fs->mratio,
		.calib_key = probe->ci.key,
		.model = mdl->name,
		.variant = probe->v->name,
	};
	ret = qf_mixed_alloc_run(&in, out);
	if (!ret)
		memcpy((*out)->calib_vid, probe->calib_vid, QF_CACHE_VID);
out_free:
	probe_free(probe);
	free(sens);
	free(uloss);
	free(lin);
	return ret;
}
