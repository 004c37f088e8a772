/*
 * job_layer.c - the calibration driver's per-layer callbacks of a job
 * (calib.c calls them in layer order): the method on the layer
 * (quant/layer.c), the commit of its tensors and loss record to the
 * cache in one transaction, and on resume the replay of a committed
 * layer from its cached (dequantized) weights, which are bit-identical
 * to what the first run continued with, so the result does not depend
 * on the interruption.  Readers wait for the layer that holds their
 * tensors: the commit wakes them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "job_i.h"

bool qf_job_layer_complete(struct qf_fs *fs, struct qf_var *var, int l)
{
	int k;

	if (var->v->spec.method == QF_METHOD_KQUANT) {
		struct qf_cache_txn *txn;
		const void *p;
		char name[32];
		size_t len;
		bool ok;

		snprintf(name, sizeof(name), "__imatrix__.%d", l);
		if (qf_cache_read_begin(fs->cache, &txn) < 0)
			return false;
		ok = qf_cache_get(txn, var->vid, name, &p, &len) == 0;
		qf_cache_read_end(txn);
		return ok;
	}

	for (k = 0; k < QF_TF_NLINEAR; k++) {
		int gi = var->job->lin_group[l * QF_TF_NLINEAR + k];

		if (gi >= 0 && !qf_flight_cached(fs, &var->fl, (size_t)gi))
			return false;
	}
	for (k = 0; k < var->job->nexp * QF_MOE_NLINEAR; k++) {
		int gi = qf_job_exp_group(var->job, l, k / QF_MOE_NLINEAR,
					  k % QF_MOE_NLINEAR);

		if (gi >= 0 && !qf_flight_cached(fs, &var->fl, (size_t)gi))
			return false;
	}
	/* the quantized head commits with the last layer */
	return l != var->job->nlayers - 1 || var->v->head < 0 ||
	       qf_flight_cached(fs, &var->fl, (size_t)var->v->head);
}

int qf_job_layers_cached(struct qf_fs *fs, struct qf_var *var)
{
	int l;

	for (l = 0; l < var->job->nlayers && qf_job_layer_complete(fs, var, l);
	     l++)
		;
	return l;
}

/* The layer's map into the variant: its linears' groups. */
static struct qf_layer_map layer_map(const struct job *j, int l)
{
	return (struct qf_layer_map){
		.v = j->var->v,
		.lin_group = j->var->job->lin_group + (size_t)l * QF_TF_NLINEAR,
	};
}

/* AWQ of layer l (lin[0..n): see qf_layer_awq), logging ReFlip's
 * effect. */
static int awq_quantize(struct job *j, int l, struct qf_tf_layer *ly,
			const enum qf_tf_linear *lin, int n,
			struct qf_lin_stats *stats)
{
	struct qf_layer_map m = layer_map(j, l);
	struct qf_layer_reflip rf;
	int ret;

	ret = qf_layer_awq(&m, &j->c, ly, lin, n, stats, &j->res, &rf);
	if (!ret && rf.on)
		qf_info("%s/%s: layer %d/%d ReFlip: attention-score error "
			"%.5f -> %.5f (%lld flips)", j->var->mdl->name,
			m.v->name, l + 1, j->var->job->nlayers, rf.before, rf.after,
			(long long)rf.flips);
	return ret;
}

/*
 * kq: GPTQ's factor U of each distinct input's Hessian among lin[] (the
 * source model's activations: the kq job leaves the weights as they
 * are), for the k-quant encoder kq_commit runs on the layer's linears.
 */
static int kq_factors(struct job *j, const enum qf_tf_linear *lin, int n,
		      const struct qf_lin_stats *stats)
{
	double t0 = qf_now();
	int i, ret = 0;

	for (i = 0; i < n && !ret; i++) {
		const struct qf_lin_stats *st = &stats[lin[i]];
		size_t len = (size_t)(st->in * st->in) * sizeof(float);
		float **u = &j->kq_u[lin[i]];

		if (qf_kq_u_owner(lin[i]) != lin[i] || !st->h)
			continue;
		free(*u);	/* a layer replayed before */
		if (!(*u = malloc(len)))
			return -ENOMEM;
		memcpy(*u, st->h, len);
		ret = qf_gptq_hinv_upper(*u, st->in, (float)j->var->ci.damp);
	}
	j->kq_s += qf_now() - t0;
	return ret;
}

/*
 * kq _awq: AWQ's scales of the stage's input (q/k/v; o where v's rows
 * can take them one to one, as AWQ folds them; gate/up and down of a
 * dense MLP), searched as AWQ's (qf_awq_search_scale: salience mean |x|,
 * alpha = i / 20, the group's output error from X^T X) on the layer as
 * it is, with round to nearest at the bits of the mix's base type in
 * groups of its sub-blocks (16 for Q2_K, Q3_K, Q6_K; 32 else), into
 * j->kq_awq[]; the stage's statistics become those of x / s, for its
 * importance matrix and GPTQ factor.  qf_kq_encode folds the scales into
 * the weights and the norms as it encodes them.
 */
static int kq_awq(struct job *j, const struct qf_tf_layer *ly,
		  const enum qf_tf_linear *lin, int n,
		  struct qf_lin_stats *stats)
{
	const struct qf_spec *sp = &j->var->v->spec;
	const struct qf_lin_stats *st = &stats[lin[0]];
	int g = qf_kq_scale_group(lin[0]);
	double t0 = qf_now();
	struct qf_awq_opts o;
	const float *w[3];
	int64_t out[3];
	float *sal, *s;
	int i, ret;

	if (!(sp->flags & QF_SPEC_AWQ) || !st->h || n > 3 ||
	    (g == 1 && (j->c.heads != j->c.kv_heads || ly->b[QF_TF_V])) ||
	    (g >= 2 && ly->moe))
		return 0;
	for (i = 0; i < n; i++) {
		if (!(w[i] = ly->w[lin[i]]))
			return 0;
		out[i] = qf_tf_linear_out(&j->c, lin[i]);
	}
	qf_awq_defaults(&o, sp->bits, sp->bits == 4 || sp->bits == 5 ?
			32 : 16);
	sal = malloc((size_t)st->in * sizeof(*sal));
	s = malloc((size_t)st->in * sizeof(*s));
	ret = sal && s ? 0 : -ENOMEM;
	if (!ret) {
		qf_awq_salience(st, false, sal);
		ret = qf_awq_search_scale(w, out, n, st->in, sal, st->h, &o,
					  s, &j->kq_alpha[g], NULL, NULL);
	}
	for (i = 0; i < n && !ret; i++)	/* the lender's X^T X first */
		qf_awq_scale_stats(&stats[lin[i]], s);
	free(sal);
	free(j->kq_awq[g]);
	j->kq_awq[g] = ret ? NULL : s;
	if (ret)
		free(s);
	j->kq_s += qf_now() - t0;
	return ret;
}

static int cb_quantize(void *arg, int l, struct qf_tf_layer *ly,
		       const enum qf_tf_linear *lin, int n,
		       struct qf_lin_stats *stats)
{
	struct job *j = arg;
	struct qf_layer_map m = layer_map(j, l);

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	if (j->var->v->spec.method == QF_METHOD_AWQ)
		return awq_quantize(j, l, ly, lin, n, stats);
	if (j->var->v->spec.method == QF_METHOD_KQUANT) {
		/* weights unchanged (a MoE stage: its own linears' part) */
		int ret = kq_awq(j, ly, lin, n, stats);

		if (ret < 0)
			return ret;
		qf_layer_imatrix(lin, n, stats, j->imat +
				 qf_kq_imatrix_off(&j->c, lin[0]));
		return kq_factors(j, lin, n, stats);
	}
	return qf_layer_gptq(&m, ly, lin, n, stats, &j->res);
}

/* GPTQ of expert e's gate and up, or down (calib.c's true sequential). */
static int cb_quantize_expert(void *arg, int l, int e, enum qf_moe_linear k,
			      float **w, struct qf_lin_stats *st,
			      int64_t routed)
{
	struct job *j = arg;
	const struct qf_job *jb = j->var->job;
	int i, n = k == QF_MOE_GATE ? 2 : 1, ret = 0;

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	if (j->var->v->spec.method == QF_METHOD_KQUANT) {
		/* the imatrix of the tokens routed to it; weights unchanged */
		for (i = 0; i < n; i++)
			qf_layer_imatrix(&(enum qf_tf_linear){ i }, 1, st,
					 j->imat + qf_kq_imatrix_exp_off(&j->c,
						e, k == QF_MOE_GATE ?
						(enum qf_moe_linear)i : k));
		return 0;
	}
	if (!j->tokens &&
	    !(j->tokens = calloc(j->var->v->ng ? j->var->v->ng : 1,
				 sizeof(*j->tokens))))
		return -ENOMEM;
	for (i = 0; i < n && !ret; i++) {
		int lin = k == QF_MOE_GATE ? i : QF_MOE_DOWN;
		int gi = qf_job_exp_group(jb, l, e, lin);

		if (gi >= 0)
			j->tokens[gi] = (double)routed;
		ret = qf_layer_gptq_one(j->var->v, gi, w[lin], &st[i], &j->res);
	}
	return ret;
}

/* AWQ of layer l's MoE block (quant/layer_moe.c), after the attention. */
static int cb_quantize_moe(void *arg, int l, struct qf_tf_layer *ly,
			   const float *xn, int64_t ntok)
{
	struct job *j = arg;
	const struct qf_job *jb = j->var->job;
	int *groups = malloc((size_t)(jb->nexp ? jb->nexp : 1) *
			     QF_MOE_NLINEAR * sizeof(int));
	int k, ret;

	if (qf_fs_stopping(j->fs)) {
		free(groups);
		return -EINTR;
	}
	if (!j->tokens &&
	    !(j->tokens = calloc(j->var->v->ng ? j->var->v->ng : 1,
				 sizeof(*j->tokens))))
		groups = (free(groups), NULL);
	if (!groups)
		return -ENOMEM;
	for (k = 0; k < jb->nexp * QF_MOE_NLINEAR; k++)
		groups[k] = qf_job_exp_group(jb, l, k / QF_MOE_NLINEAR,
					     k % QF_MOE_NLINEAR);
	ret = qf_layer_awq_moe(j->var->v, &j->c, l, groups, ly, xn, ntok,
			       &j->res, j->tokens);
	free(groups);
	return ret;
}

static int brecq_progress(void *arg, int iter, int iters, double rec,
			  double reg)
{
	struct job *j = arg;

	qf_info("%s/%s: layer %d/%d BRECQ step %d/%d: reconstruction %.4g, "
		"rounding regularizer %.4g", j->var->mdl->name,
		j->var->v->name, j->layer + 1, j->var->job->nlayers, iter, iters,
		rec, reg);
	return qf_fs_stopping(j->fs) ? -EINTR : 0;
}

/*
 * BRECQ of layer l (quant/layer.c): learned rounding of its linears
 * against the full-precision layer's output y on the quantized model's
 * input x; the codes into j->res.
 */
static int cb_block(void *arg, int l, struct qf_tf_layer *ly,
		    const struct qf_tf_seqs *x, const struct qf_tf_seqs *y,
		    int nseq, int seqlen)
{
	struct job *j = arg;
	struct qf_layer_map m = layer_map(j, l);
	struct qf_layer_brecq info;
	struct qf_brecq_opts o;
	const struct qf_job *jb = j->var->job;
	int *groups = NULL, k, ret;

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	if (ly->moe) {	/* the experts' groups, their routed tokens */
		groups = malloc((size_t)(jb->nexp ? jb->nexp : 1) *
				QF_MOE_NLINEAR * sizeof(*groups));
		if (!j->tokens)
			j->tokens = calloc(j->var->v->ng ? j->var->v->ng : 1,
					   sizeof(*j->tokens));
		if (!groups || !j->tokens) {
			free(groups);
			return -ENOMEM;
		}
		for (k = 0; k < jb->nexp * QF_MOE_NLINEAR; k++)
			groups[k] = qf_job_exp_group(jb, l, k / QF_MOE_NLINEAR,
						     k % QF_MOE_NLINEAR);
		m.exp_group = groups;
		m.tokens = j->tokens;
	}
	qf_brecq_opts_default(&o);
	o.iters = j->var->ci.brecq_iters;
	if (j->fs->o.brecq_batch > 0)
		o.batch_seqs = j->fs->o.brecq_batch;
	o.seed = (uint64_t)l;
	o.progress = brecq_progress;
	o.arg = j;
	o.every = 50;
	o.mem_bytes = j->fs->o.calib_mem > 0 ? (int64_t)j->fs->o.calib_mem :
					       QF_CALIB_MEM_BYTES;
	o.spill_dir = j->fs->cache_dir;
	j->layer = l;
	ret = qf_layer_brecq(&m, &j->c, l, ly, x, y, nseq, seqlen, &o, &j->res,
			     &info);
	free(groups);
	if (!ret)
		qf_info("%s/%s: layer %d/%d BRECQ: block output error %.4g -> "
			"%.4g (relative; round to nearest -> learned rounding), "
			"%.1f s, %d steps of it %.1f s%s", j->var->mdl->name,
			m.v->name, l + 1, j->var->job->nlayers, info.rel_rtn,
			info.rel_final, info.seconds, info.iters,
			info.step_seconds,
			info.spilled ? " (its rounding state in a temporary "
				       "file: calib_mem)" : "");
	return ret;
}

/* Group gi's cached packed tensors, dequantized into w. */
static int replay(struct job *j, int gi, float *w)
{
	struct qf_var *var = j->var;
	const struct qf_vgroup *g = &var->v->g[gi];
	int64_t out, in, ng;
	uint8_t *q;
	uint16_t *sc;
	int32_t *z, *gidx;
	int ret;

	out = g->w->t->shape[0];
	in = g->w->t->shape[1];
	ng = qf_ngroups(in, g->qp.group);
	q = malloc((size_t)(out * in));
	sc = malloc((size_t)(out * ng) * 2);
	z = malloc((size_t)(out * ng) * 4);
	gidx = malloc((size_t)in * 4);
	ret = q && sc && z && gidx ?
	      qf_flight_unpack(j->fs, var->vid, var->v, (size_t)gi, q, sc, z,
			       gidx) :
	      -ENOMEM;
	if (!ret)
		qf_layer_dequant(g, q, sc, z, gidx, w);
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

/* Resume: layer l's experts from the cache (AWQ: expert 0's groups
 * also hold the changed norm, router and shared gate, layer_moe.c). */
static int replay_experts(struct job *j, int l, struct qf_tf_layer *ly)
{
	const struct qf_variant *v = j->var->v;
	int e, k, gi, ret = 0;

	for (e = 0; e < j->var->job->nexp && !ret; e++)
		for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
			float *extra = qf_layer_awq_moe_extra(ly, k);

			gi = qf_job_exp_group(j->var->job, l, e, k);
			if (gi >= 0)
				ret = replay(j, gi,
					     qf_tf_moe_weights(ly, e)[k]);
			if (!ret && gi >= 0 && v->g[gi].norm && extra)
				ret = qf_flight_get_f32(j->fs, j->var->vid,
					&v->t[v->g[gi].first + v->g[gi].n - 1],
					extra);
		}
	return ret;
}

/* Resume: the cached packed tensors of layer l, dequantized into ly. */
static int cb_cached(void *arg, int l, struct qf_tf_layer *ly, bool *cached)
{
	struct job *j = arg;
	struct qf_var *var = j->var;
	int k, ret = 0;

	*cached = l < j->first;
	for (k = 0; k < QF_TF_NLINEAR && *cached && !ret; k++) {
		int gi = var->job->lin_group[l * QF_TF_NLINEAR + k];
		const struct qf_vgroup *g;

		if (gi < 0)
			continue;
		g = &var->v->g[gi];
		ret = replay(j, gi, ly->w[k]);
		/* AWQ: the norm that absorbed this group's scales */
		if (!ret && g->norm)
			ret = qf_flight_get_f32(j->fs, var->vid,
						&var->v->t[g->first + g->n - 1],
						k == QF_TF_Q ?
						ly->in_norm : ly->post_norm);
		if (!ret && g->norm && j->c.norm_plus1)	/* gemma: 1 + w */
			qf_tf_norm_plus1(k == QF_TF_Q ? ly->in_norm :
					 ly->post_norm, j->c.hidden);
		if (ret < 0)
			qf_err("%s/%s: cannot replay %s from the cache: %s",
			       var->mdl->name, var->v->name, g->w->name,
			       qf_strerror(ret));
	}
	if (*cached && !ret)
		ret = replay_experts(j, l, ly);
	return ret;
}

/*
 * A MoE layer's experts for the commit: their groups' tensors into
 * items[*n..], their "__experts__.N" record (name, rec: [nexp *
 * QF_MOE_NLINEAR * EXP_REC]) last.
 */
static void commit_experts(struct job *j, int l, struct qf_cache_item *items,
			   size_t *n, char *name, double *rec)
{
	const struct qf_variant *v = j->var->v;
	int k, gi;
	uint32_t t;

	for (k = 0; k < j->var->job->nexp * QF_MOE_NLINEAR; k++) {
		gi = qf_job_exp_group(j->var->job, l, k / QF_MOE_NLINEAR,
				      k % QF_MOE_NLINEAR);
		rec[EXP_REC * k] = gi >= 0 ? j->res.loss[gi] : -1;
		rec[EXP_REC * k + 1] = gi >= 0 ? j->res.loss_rtn[gi] : -1;
		rec[EXP_REC * k + 2] = gi >= 0 && j->tokens ?
				       j->tokens[gi] : -1;
		rec[EXP_REC * k + 3] = gi >= 0 &&
			j->var->v->spec.method == QF_METHOD_AWQ ?
			j->res.alpha[gi] : -1;
		for (t = 0; gi >= 0 && t < v->g[gi].n; t++) {
			const struct qf_vtensor *vt = &v->t[v->g[gi].first + t];

			items[*n].name = vt->name;
			items[*n].data = j->res.pending[(size_t)gi * 4 + t];
			items[*n].len = qf_vtensor_bytes(vt);
			(*n)++;
		}
	}
	snprintf(name, 32, "__experts__.%d", l);
	items[(*n)++] = (struct qf_cache_item){ name, rec,
		(size_t)j->var->job->nexp * QF_MOE_NLINEAR * EXP_REC *
		sizeof(double) };
}

/* The pending tensors of group gi, committed: freed. */
static void free_pending(struct job *j, int gi)
{
	uint32_t t;

	for (t = 0; gi >= 0 && t < 4; t++) {
		free(j->res.pending[(size_t)gi * 4 + t]);
		j->res.pending[(size_t)gi * 4 + t] = NULL;
	}
}

/*
 * The last layer (l) of a variant with a quantized head (_head<h>): GPTQ
 * (AWQ for awq, its scales folded into model.norm) of the head on the
 * final norm's outputs of x, the layer's quantized output [ntok,
 * hidden]; its tensors and its "__head__" record (rec [3]: loss,
 * loss_rtn, and for AWQ alpha) into items[*n..], committed with the
 * layer.  0 where there is nothing to do.
 */
static int commit_head(struct job *j, int l, const float *x, int64_t ntok,
		       struct qf_cache_item *items, size_t *n, double *rec)
{
	const struct qf_variant *v = j->var->v;
	const struct qf_vgroup *g;
	uint32_t t;
	int ret;

	if (v->head < 0 || l != j->var->job->nlayers - 1)
		return 0;
	ret = qf_layer_head(v, &j->c, x, ntok, &j->res);
	if (ret < 0) {
		qf_err("%s/%s: lm_head: %s", j->var->mdl->name, v->name,
		       qf_strerror(ret));
		return ret;
	}
	g = &v->g[v->head];
	for (t = 0; t < g->n; t++) {
		items[*n].name = v->t[g->first + t].name;
		items[*n].data = j->res.pending[(size_t)v->head * 4 + t];
		items[*n].len = qf_vtensor_bytes(&v->t[g->first + t]);
		(*n)++;
	}
	rec[0] = j->res.loss[v->head];
	rec[1] = j->res.loss_rtn[v->head];
	rec[2] = j->res.alpha[v->head];	/* AWQ's only */
	items[(*n)++] = (struct qf_cache_item){ "__head__", rec,
		(v->spec.method == QF_METHOD_AWQ ? 3 : 2) * sizeof(double) };
	qf_info("%s/%s: lm_head: rel. output error %s %.4g vs rtn %.4g",
		j->var->mdl->name, v->name, qf_method_name(v->spec.method),
		j->res.loss[v->head], j->res.loss_rtn[v->head]);
	return 0;
}

/*
 * kq: layer l's dense linears (with the last layer output.weight, its
 * factor from the final norm's outputs of x [ntok, hidden]) encoded as
 * the view serves them, GPTQ on their k-quant grids, into items: the
 * factors stay in memory (issue #24: 60 MB a layer at Qwen3-0.6B's
 * shapes, where the encoded tensors are about 9).
 */
static int kq_commit(struct job *j, int l, const float *x, int64_t ntok,
		     struct qf_cache_item *items, size_t *n)
{
	struct qf_var *var = j->var;
	double t0 = qf_now();
	int ret = 0;

	if (!j->kq_plan) {
		j->kq_plan = calloc(1, sizeof(*j->kq_plan));
		ret = j->kq_plan ? qf_kq_plan(var, j->kq_plan) : -ENOMEM;
		if (ret < 0) {
			free(j->kq_plan);
			j->kq_plan = NULL;
		}
	}
	if (!ret && l == var->job->nlayers - 1 && qf_kq_head(j->kq_plan)) {
		float **u = &j->kq_u[QF_TF_NLINEAR];

		ret = qf_layer_head_hessian(var->v->m, &j->c, x, ntok, u);
		if (!ret)
			ret = qf_gptq_hinv_upper(*u, j->c.hidden,
						 (float)var->ci.damp);
	}
	j->kq_s += qf_now() - t0;
	t0 = qf_now();
	if (!ret)
		ret = qf_kq_encode(var->v->m, j->kq_plan, l, j->imat, j->kq_u,
				   j->kq_awq, j->kq_name, j->kq_enc, items, n);
	j->kq_enc_s += qf_now() - t0;
	return ret;
}

/* kq _awq: ", AWQ alpha q/k/v 0.35 o - gate/up 0.3 down 0.6" or "". */
static void kq_awq_log(const struct job *j, char *buf, size_t cap)
{
	static const char *const name[4] = { "q/k/v", "o", "gate/up",
					     "down" };
	size_t n = 0;
	int g;

	buf[0] = 0;
	if (!(j->var->v->spec.flags & QF_SPEC_AWQ))
		return;
	n += (size_t)snprintf(buf, cap, ", AWQ alpha");
	for (g = 0; g < 4 && n < cap; g++)
		n += (size_t)(j->kq_awq[g] ?
			      snprintf(buf + n, cap - n, " %s %.2f", name[g],
				       j->kq_alpha[g]) :
			      snprintf(buf + n, cap - n, " %s -", name[g]));
}

/* Commit layer l: its tensors and its loss record, one transaction. */
static int cb_layer_done(void *arg, int l, const float *x, int64_t ntok,
			 double seconds)
{
	struct job *j = arg;
	struct qf_var *var = j->var;
	size_t nx = (size_t)var->job->nexp * QF_MOE_NLINEAR;
	/* the linears' tensors, 3 records, the head's 4 tensors and
	 * record, the experts' tensors */
	struct qf_cache_item *items = malloc((QF_TF_NLINEAR * 5 + 8 +
					      nx * 4) * sizeof(*items));
	double *xrec = malloc((nx ? nx : 1) * EXP_REC * sizeof(double));
	double rec[QF_TF_NLINEAR * REC], hrec[3];
	double sum_g = 0, sum_r = 0, eta;
	char recname[32], imname[32], xname[32], awq[96];
	size_t n = 0;
	int k, m = 0, ret;
	uint32_t t;

	if (l < j->first || !items || !xrec) {
		free(items);
		free(xrec);
		return l < j->first ? 0 : -ENOMEM;	/* 0: replayed */
	}
	ret = commit_head(j, l, x, ntok, items, &n, hrec);
	if (ret < 0) {
		free(items);
		free(xrec);
		return ret;
	}
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		int gi = var->job->lin_group[l * QF_TF_NLINEAR + k];
		const struct qf_vgroup *g;

		for (t = 0; t < REC; t++)
			rec[REC * k + t] = -1;
		if (gi < 0)
			continue;
		g = &var->v->g[gi];
		for (t = 0; t < g->n; t++) {
			const struct qf_vtensor *vt = &var->v->t[g->first + t];

			items[n].name = vt->name;
			items[n].data = j->res.pending[(size_t)gi * 4 + t];
			items[n].len = qf_vtensor_bytes(vt);
			n++;
		}
		rec[REC * k] = j->res.loss[gi];
		rec[REC * k + 1] = j->res.loss_rtn[gi];
		rec[REC * k + 2] = j->res.alpha[gi];
		rec[REC * k + 3] = j->res.score[2 * gi];
		rec[REC * k + 4] = j->res.score[2 * gi + 1];
		sum_g += j->res.loss[gi];
		sum_r += j->res.loss_rtn[gi];
		m++;
	}
	snprintf(recname, sizeof(recname), "__layer__.%d", l);
	items[n++] = (struct qf_cache_item){ recname, rec, sizeof(rec) };
	if (nx && qf_moe_layer_sparse(&j->c, l)) {
		commit_experts(j, l, items, &n, xname, xrec);
		for (k = 0; k < (int)nx; k++)	/* the experts in the mean */
			if (xrec[EXP_REC * k] >= 0) {
				sum_g += xrec[EXP_REC * k];
				sum_r += xrec[EXP_REC * k + 1];
				m++;
			}
	}
	if (var->v->spec.method == QF_METHOD_KQUANT) {
		snprintf(imname, sizeof(imname), "__imatrix__.%d", l);
		items[n++] = (struct qf_cache_item){ imname, j->imat,
			qf_kq_imatrix_len(&j->c) * sizeof(float) };
		ret = kq_commit(j, l, x, ntok, items, &n);
		if (ret < 0) {
			free(items);
			free(xrec);
			return ret;
		}
	}
	kq_awq_log(j, awq, sizeof(awq));
	eta = qf_now();
	ret = qf_fs_cache_put(j->fs, var->vid, items, n);
	qf_job_kq_free(j);
	j->commit_s += qf_now() - eta;
	for (k = 0; k < QF_TF_NLINEAR; k++)
		free_pending(j, var->job->lin_group[l * QF_TF_NLINEAR + k]);
	free_pending(j, l == var->job->nlayers - 1 ? var->v->head : -1);
	for (k = 0; k < (int)nx; k++)
		free_pending(j, qf_job_exp_group(var->job, l,
						 k / QF_MOE_NLINEAR,
						 k % QF_MOE_NLINEAR));
	free(items);
	free(xrec);
	if (ret < 0)
		return ret;
	/* log first: a reader woken below may look for this line */
	eta = (qf_now() - j->t0) / (l + 1 - j->first) *
	      (var->job->nlayers - l - 1);
	if (var->v->spec.method == QF_METHOD_KQUANT)
		qf_info("%s/%s: layer %d/%d imatrix in %.2f s%s, eta %.0f s",
			var->mdl->name, var->v->name, l + 1, var->job->nlayers,
			seconds, awq, eta);
	else
		qf_info("%s/%s: layer %d/%d in %.2f s, mean rel. output "
			"error %s %.5f vs rtn %.5f, eta %.0f s",
			var->mdl->name, var->v->name, l + 1, var->job->nlayers,
			seconds, qf_method_name(var->v->spec.method),
			m ? sum_g / m : 0, m ? sum_r / m : 0, eta);
	pthread_mutex_lock(&var->lock);
	var->job->layers_done = l + 1;
	pthread_cond_broadcast(&var->cond);
	pthread_mutex_unlock(&var->lock);
	qf_cluster_job_layer(j->fs, j->cl, l + 1);
	return 0;
}

void qf_job_kq_free(struct job *j)
{
	int k;

	for (k = 0; k <= QF_TF_NLINEAR; k++) {
		free(j->kq_u[k]);
		j->kq_u[k] = NULL;
	}
	for (k = 0; k < QF_KQ_ITEMS; k++) {
		free(j->kq_enc[k]);
		j->kq_enc[k] = NULL;
	}
	for (k = 0; k < 4; k++) {
		free(j->kq_awq[k]);
		j->kq_awq[k] = NULL;
	}
}

void qf_job_layer_ops(const struct qf_spec *sp, struct qf_calib_ops *ops)
{
	bool awq = sp->method == QF_METHOD_AWQ;
	bool kq = sp->method == QF_METHOD_KQUANT;
	bool brecq = sp->method == QF_METHOD_BRECQ;

	ops->hessian = !brecq;		/* kq: GPTQ's on the k-quant grids */
	ops->block = brecq ? cb_block : NULL;
	/* GPTQ: true sequential; AWQ: statistics of the layer as it is,
	 * all seven linears at once (scales couple them); kq: the imatrix
	 * of the unchanged model, one forward per layer (its stages change
	 * no weight: ops->unchanged; job.c makes it sequential with MoE
	 * layers, for the routing) */
	ops->sequential = !awq && !kq;
	ops->whole_layer = awq;
	ops->unchanged = kq;
	ops->sample_rows = awq && (sp->flags & QF_SPEC_REFLIP) ?
			   QF_REFLIP_SAMPLE : 0;
	ops->quantize = cb_quantize;
	/* MoE experts: GPTQ (and the measured mixed variants') expert by
	 * expert, kq's imatrix of each expert's routed tokens (job_calib.c
	 * lets no other method run), AWQ the whole block */
	ops->quantize_expert = sp->method == QF_METHOD_GPTQ ||
			       qf_spec_mixed_measured(sp) || kq ?
			       cb_quantize_expert : NULL;
	ops->quantize_moe = awq ? cb_quantize_moe : NULL;
	ops->layer_cached = cb_cached;
	ops->layer_done = cb_layer_done;
}
