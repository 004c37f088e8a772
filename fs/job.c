/*
 * job.c - production of calibrated variants (GPTQ, AWQ).
 *
 * One job per variant at a time walks the decoder layers in order on the
 * calibration set (quant/calib.c): each layer's linears are quantized
 * with the statistics of the already-quantized layers' outputs (true
 * sequential), and the layer's tensors are committed to the cache in one
 * transaction, with a record of its losses.  Readers wait for the layer
 * that holds their tensors.  A killed daemon resumes at the first layer
 * not in the cache: the layers before it are replayed from their cached
 * (dequantized) weights, which are bit-identical to what the first run
 * continued with, so the result does not depend on the interruption.
 * BLAS runs with a fixed thread count (the online CPUs) for the same
 * reason: OpenBLAS partitions work statically, so a given count gives
 * the same bits every run.
 *
 * The calibration set is keyed by what determines its tokens (the text
 * file's bytes and the tokenizer, or the sampler, seed and model); its
 * token ids are cached too, so a resumed job does not sample again.
 *
 * A job's state is struct qf_job (var->job), opaque outside this file.
 * Across processes it holds byte QF_LOCK_JOB of the variant's lock file
 * and reads and records through the variant's single flight (flight.c);
 * readers wait for its progress, not for a slot, so a job is not a slot.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "brecq.h"
#include "mixed.h"
#include "fs_i.h"

extern void openblas_set_num_threads(int n);

#define CALIB_MAX (1u << 30)		/* calibration text bytes */

/*
 * A calibrated variant's layer job, var->job (opaque outside job.c):
 * its layer map, progress and results.  The fields marked lock are
 * protected by var->lock; waiters wait on var->cond.
 */
struct qf_job {
	char *calib_path;		/* text set, NULL = sampled */
	int nlayers;
	int32_t *lin_group;		/* [nlayers * QF_TF_NLINEAR], -1 */
	int32_t *group_layer;		/* [ng] */
	int layers_done;		/* lock */
	bool running;			/* lock */
	unsigned gen;			/* lock */
	int err;			/* lock: result of the last job */
	double t0;			/* lock: when the running job began */
	double first_t;			/* lock: when its first layer began */
	int first;			/* lock: first layer it computes */
	const char *phase;		/* lock: what the job does now */
	double *res_loss;		/* [ng] results, set before ready */
	double *res_rtn;		/* [ng] */
	double *res_alpha;		/* [ng] awq */
	double *res_score;		/* [ng * 2] awq reflip */
	double res_seconds;
	char res_hash[65];		/* token hash of the set used */
};

/* The running job's thread context. */
struct job {
	struct qf_fs *fs;
	struct qf_var *var;
	struct qf_tf_config c;
	int first;			/* layers before it are replayed */
	double t0;
	void **pending;			/* [ng][4] buffers of the layer */
	double *loss;			/* [ng] */
	double *loss_rtn;		/* [ng] */
	double *alpha;			/* [ng] awq */
	double *score;			/* [ng * 2] awq reflip, q_proj groups */
	float *imat;			/* kq: this layer's importance matrix */
	int layer;			/* brecq: the block being rebuilt */
	double *sens;			/* mixed: [ng][SENS_REC] */
	/* where the time goes (logged at the end of the job) */
	struct qf_gptq_times gt;
	double stats_s;			/* X^T X and channel sums */
	double compare_s;		/* RTN and the output errors */
	double pack_s;			/* packing into checkpoint tensors */
	double commit_s;		/* LMDB transactions */
};

/*
 * "__layer__.N" records: per linear of the layer, REC doubles: loss,
 * loss_rtn, alpha, score error before / after (-1 where not applicable).
 * Records of two doubles per linear (GPTQ before AWQ existed) still read.
 */
#define REC 5
#define REC_OLD 2

static int layer_of(const char *name)
{
	const char *p = strstr(name, "layers.");

	return p ? atoi(p + 7) : -1;
}

/* Key of the calibration set: what determines its token ids. */
static int calib_key(struct qf_fs *fs, struct qf_var *var,
		     const struct qf_spec *s)
{
	const struct qf_fs_opts *o = &fs->o;
	struct qf_buf b = QF_BUF_INIT, tok = QF_BUF_INIT;
	struct qf_sha256 h;
	uint8_t d[32];
	char num[64];
	int ret = 0;

	var->ci.nseq = o->calib_n > 0 ? o->calib_n : 32;
	var->ci.seqlen = o->calib_len > 0 ? o->calib_len : 256;
	qf_sha256_init(&h);
	if (s->calib[0]) {
		if (!o->calib_dir) {
			qf_err("%s: '@%s' needs -o calib_dir=DIR",
			       var->mdl->name, s->calib);
			return -ENOENT;
		}
		qf_buf_addf(&b, "%s/%s.txt", o->calib_dir, s->calib);
		var->job->calib_path = qf_buf_detach(&b, NULL);
	} else if (o->calib) {
		var->job->calib_path = strdup(o->calib);
	}
	if (var->job->calib_path) {
		ret = qf_src_read_path(var->job->calib_path, CALIB_MAX, &b);
		if (ret < 0) {
			qf_err("%s: cannot read calibration text '%s': %s",
			       var->mdl->name, var->job->calib_path,
			       qf_strerror(ret));
			return ret == -ENOENT ? -ENOENT : QF_EFORMAT;
		}
		qf_src_read(var->mdl->m->dirfd, "tokenizer.json", 64u << 20,
			    &tok);
		qf_sha256_update(&h, "text-v1", 8);
		qf_sha256_update(&h, b.data, b.len);
		qf_sha256_update(&h, tok.data, tok.len);
		snprintf(var->ci.source, sizeof(var->ci.source),
			 "text: %s (%zu bytes)", var->job->calib_path, b.len);
	} else {
		qf_sha256_update(&h, "sampled-v1", 11);
		qf_sha256_update(&h, var->mdl->m->fp_hex, 64);
		snprintf(var->ci.source, sizeof(var->ci.source),
			 "sampled from the model: temperature 1, from BOS, "
			 "seed %llu", (unsigned long long)o->calib_seed);
	}
	snprintf(num, sizeof(num), "%d/%d/%llu", var->ci.nseq,
		 var->ci.seqlen, (unsigned long long)o->calib_seed);
	qf_sha256_update(&h, num, strlen(num));
	qf_sha256_final(&h, d);
	memcpy(var->calib_vid, d, QF_CACHE_VID);
	qf_hex(d, 32, var->ci.key);
	memset(var->ci.hash, '0', 64);
	var->ci.hash[64] = 0;
	var->ci.damp = 0.01;
	var->ci.backend = qf_backend_name(fs->backend);
	if (s->method == QF_METHOD_BRECQ) {
		struct qf_brecq_opts bo;

		qf_brecq_opts_default(&bo);
		var->ci.brecq_iters = o->brecq_iters > 0 ? o->brecq_iters :
				      o->brecq_iters < 0 ? 0 : bo.iters;
		var->ci.brecq_batch = o->brecq_batch > 0 ? o->brecq_batch :
							   bo.batch_seqs;
	}
	qf_buf_release(&b);
	qf_buf_release(&tok);
	return 0;
}

int qf_job_setup(struct qf_fs *fs, struct qf_var *var)
{
	const struct qf_variant *v = var->v;
	struct qf_tf_config c;
	struct qf_job *jb;
	size_t i;
	int ret, k;

	ret = qf_tf_config_parse(var->mdl->m, &c);
	if (ret < 0)
		return QF_EUNSUPPORTED;	/* no forward pass: no calibration */
	jb = var->job = calloc(1, sizeof(*var->job));
	if (!jb)
		return -ENOMEM;
	ret = calib_key(fs, var, &v->spec);
	if (ret < 0)
		return ret;
	jb->nlayers = c.layers;
	jb->lin_group = malloc((size_t)c.layers * QF_TF_NLINEAR *
			       sizeof(*jb->lin_group));
	jb->group_layer = malloc((v->ng ? v->ng : 1) *
				 sizeof(*jb->group_layer));
	if (!jb->lin_group || !jb->group_layer)
		return -ENOMEM;
	for (i = 0; i < (size_t)c.layers * QF_TF_NLINEAR; i++)
		jb->lin_group[i] = -1;
	for (i = 0; i < v->ng; i++) {
		const char *n = v->g[i].w->name;
		int l = layer_of(n);

		jb->group_layer[i] = l;
		if (l < 0 || l >= c.layers) {
			qf_err("%s: %s is outside the decoder layers",
			       var->mdl->name, n);
			return QF_EUNSUPPORTED;
		}
		for (k = 0; k < QF_TF_NLINEAR; k++) {
			char want[256];

			snprintf(want, sizeof(want), "model.layers.%d.%s.weight",
				 l, qf_tf_linear_name(k));
			if (!strcmp(want, n))
				jb->lin_group[l * QF_TF_NLINEAR + k] = (int)i;
		}
	}
	return 0;
}

void qf_job_free(struct qf_var *var)
{
	struct qf_job *jb = var->job;

	if (!jb)
		return;
	free(jb->res_loss);
	free(jb->res_rtn);
	free(jb->res_alpha);
	free(jb->res_score);
	free(jb->calib_path);
	free(jb->lin_group);
	free(jb->group_layer);
	free(jb);
	var->job = NULL;
}

/* ------------------------------------------------------------------ */
/* the calibration set                                                 */

static void set_phase(struct qf_var *var, const char *phase)
{
	pthread_mutex_lock(&var->lock);
	var->job->phase = phase;
	pthread_mutex_unlock(&var->lock);
}

static int calib_set(struct job *j, struct qf_calib *cs)
{
	struct qf_var *var = j->var;
	struct qf_fs *fs = j->fs;
	struct qf_cache_item it;
	struct qf_cache_txn *txn;
	struct qf_buf text = QF_BUF_INIT;
	struct qf_tok *tok = NULL;
	const char *why = NULL;
	const void *p;
	size_t len, n = (size_t)var->ci.nseq * var->ci.seqlen;
	int32_t bos;
	int ret;

	memset(cs, 0, sizeof(*cs));
	if (qf_cache_read_begin(fs->cache, &txn) == 0) {
		if (qf_cache_get(txn, var->calib_vid, "__ids__", &p, &len) == 0
		    && len == n * sizeof(int32_t) && (cs->ids = malloc(len)))
			memcpy(cs->ids, p, len);
		qf_cache_read_end(txn);
	}
	if (cs->ids) {
		cs->nseq = var->ci.nseq;
		cs->seqlen = var->ci.seqlen;
		qf_calib_hash(cs);
		return 0;
	}
	ret = qf_model_tokenizer(var->mdl->m, &tok, &why);
	if (ret < 0 && var->job->calib_path) {
		qf_err("%s: tokenizer: %s", var->mdl->name,
		       why ? why : qf_strerror(ret));
		goto out_free;
	}
	bos = tok ? qf_tok_bos(tok) : -1;
	if (bos < 0)
		bos = (int32_t)qf_model_cfg_int(var->mdl->m, "bos_token_id", 0);
	if (var->job->calib_path) {
		ret = qf_src_read_path(var->job->calib_path, CALIB_MAX, &text);
		if (!ret)
			ret = qf_calib_from_text(tok, text.data, text.len,
						 var->ci.nseq, var->ci.seqlen,
						 cs);
		if (ret == -EINVAL) {
			qf_err("%s: calibration text '%s' has fewer than "
			       "%d x %d tokens", var->mdl->name,
			       var->job->calib_path, var->ci.nseq,
			       var->ci.seqlen - 1);
			ret = QF_EFORMAT;
		}
	} else {
		set_phase(var, "sampling the calibration set");
		qf_info("%s/%s: sampling %d x %d calibration tokens from the "
			"model", var->mdl->name, var->v->name, var->ci.nseq,
			var->ci.seqlen);
		ret = qf_calib_sample(var->mdl->m, &j->c, bos, var->ci.nseq,
				      var->ci.seqlen, fs->o.calib_seed, cs);
	}
	if (ret < 0)
		goto out_free;
	it = (struct qf_cache_item){ "__ids__", cs->ids, n * sizeof(int32_t) };
	ret = qf_fs_cache_put(fs, var->calib_vid, &it, 1);
out_free:
	qf_tok_close(tok);
	qf_buf_release(&text);
	if (ret < 0)
		qf_calib_free(cs);
	return ret;
}

/* ------------------------------------------------------------------ */
/* the calibration driver's callbacks                                  */

static bool layer_complete(struct qf_fs *fs, struct qf_var *var, int l)
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
	return true;
}

/* tr(D H D^T) for D [out, in]: the output error energy of D on X. */
static double energy(const float *d, const float *h, int64_t out, int64_t in,
		     float *tmp)
{
	double e = 0;
	int64_t i;

	qf_sgemm(false, false, (int)out,
		    (int)in, (int)in, 1.0f, d, (int)in, h, (int)in, 0.0f, tmp,
		    (int)in);
	for (i = 0; i < out * in; i++)
		e += (double)tmp[i] * d[i];
	return e;
}

static int quantize_linear(struct job *j, int gi, float *w,
			   struct qf_lin_stats *st)
{
	const struct qf_vgroup *g = &j->var->v->g[gi];
	const struct qf_spec *s = &j->var->v->spec;
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group), gs = ng == 1 ? in : g->qp.group;
	struct qf_gptq_opts o = {
		.qp = g->qp,
		.act_order = s->flags & QF_SPEC_ACT,
		.static_groups = s->flags & QF_SPEC_STATIC,
		.damp = 0.01f,
		.blocksize = 128,
		.times = &j->gt,
	};
	size_t wn = (size_t)(out * in);
	float *w0 = malloc(wn * sizeof(float)), *h = malloc((size_t)(in * in) * 4);
	float *tmp = malloc(wn * sizeof(float)), *d = malloc(wn * sizeof(float));
	uint8_t *q = malloc(wn);
	uint16_t *sc = malloc((size_t)(out * ng) * 2);
	int32_t *z = malloc((size_t)(out * ng) * 4), *gidx = malloc((size_t)in * 4);
	void **bufs = j->pending + (size_t)gi * 4;
	double base, loss, t0 = qf_now(), t1;
	int64_t i, k;
	int ret = -ENOMEM;

	if (!w0 || !h || !tmp || !d || !q || !sc || !z || !gidx)
		goto out_free;
	memcpy(w0, w, wn * sizeof(float));
	memcpy(h, st->h, (size_t)(in * in) * 4);
	base = energy(w0, h, out, in, tmp);
	/* round to nearest at the same settings, for the record */
	ret = qf_rtn_quantize(w0, out, in, &g->qp, q, sc, z);
	if (ret < 0)
		goto out_free;
	for (i = 0; i < out; i++)
		for (k = 0; k < in; k++)
			d[i * in + k] = w0[i * in + k] -
				qf_f16_to_f32(sc[i * ng + k / gs]) *
				((float)q[i * in + k] - (float)z[i * ng + k / gs]);
	j->loss_rtn[gi] = base > 0 ? energy(d, h, out, in, tmp) / base : 0;
	t1 = qf_now();
	ret = qf_gptq_quantize(w, out, in, st->h, &o, q, sc, z, gidx, &loss);
	if (ret < 0)
		goto out_free;
	t0 += qf_now() - t1;	/* the comparison's time only */
	for (i = 0; i < (int64_t)wn; i++)
		d[i] = w0[i] - w[i];
	j->loss[gi] = base > 0 ? energy(d, h, out, in, tmp) / base : 0;
	j->alpha[gi] = j->score[2 * gi] = j->score[2 * gi + 1] = -1;
	j->compare_s += qf_now() - t0;
	t0 = qf_now();
	for (k = 0; k < (int64_t)g->n; k++) {
		bufs[k] = malloc(qf_vtensor_bytes(&j->var->v->t[g->first + k]));
		if (!bufs[k]) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	qf_variant_emit(j->var->v, (size_t)gi, q, sc, z, gidx, bufs);
	j->pack_s += qf_now() - t0;
	ret = 0;
out_free:
	free(w0);
	free(h);
	free(tmp);
	free(d);
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

/* Norm weights in f32 into dst in the tensor's dtype. */
static void store_norm(const struct qf_vtensor *t, const float *x, void *dst)
{
	int64_t i, n = t->shape[0];

	for (i = 0; i < n; i++) {
		if (t->dtype == QF_DT_BF16)
			((uint16_t *)dst)[i] = qf_f32_to_bf16(x[i]);
		else if (t->dtype == QF_DT_F16)
			((uint16_t *)dst)[i] = qf_f32_to_f16(x[i]);
		else
			((float *)dst)[i] = x[i];
	}
}

/*
 * Pack group gi's integer results into its output tensors, allocated
 * into j->pending (groups of consecutive columns: g_idx is c / gs).
 */
static int emit_group(struct job *j, int gi, const uint8_t *q,
		      const uint16_t *sc, const int32_t *z)
{
	const struct qf_variant *v = j->var->v;
	const struct qf_vgroup *g = &v->g[gi];
	void **bufs = j->pending + (size_t)gi * 4;
	int64_t in = g->w->t->shape[1], c;
	int64_t gs = qf_ngroups(in, g->qp.group) == 1 ? in : g->qp.group;
	int32_t *gidx = malloc((size_t)in * sizeof(*gidx));
	uint32_t t;

	for (t = 0; t < g->n && gidx; t++)
		if (!(bufs[t] = malloc(qf_vtensor_bytes(&v->t[g->first + t]))))
			break;
	if (!gidx || t < g->n) {
		free(gidx);
		return -ENOMEM;
	}
	for (c = 0; c < in; c++)
		gidx[c] = (int32_t)(c / gs);
	qf_variant_emit(v, (size_t)gi, q, sc, z, gidx, bufs);
	free(gidx);
	return 0;
}

/* AWQ of layer l (quant/awq_layer.c), its tensors into j->pending. */
static int awq_quantize(struct job *j, int l, struct qf_tf_layer *ly,
			struct qf_lin_stats *stats)
{
	const struct qf_variant *v = j->var->v;
	const struct qf_spec *s = &v->spec;
	struct qf_awq_layer_opts lo = {
		.l2 = s->flags & QF_SPEC_L2,
		.reflip = s->flags & QF_SPEC_REFLIP,
	};
	struct qf_awq_layer_res res;
	struct qf_awq_opts o;
	int k, ret = 0;

	memset(&res, 0, sizeof(res));
	qf_awq_defaults(&o, s->bits, s->group < 0 ? INT32_MAX : s->group);
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + k];
		const struct qf_vgroup *g = gi >= 0 ? &v->g[gi] : NULL;
		size_t out, in, ng;

		lo.quantize[k] = g != NULL;
		if (!g)
			continue;
		out = (size_t)g->w->t->shape[0];
		in = (size_t)g->w->t->shape[1];
		ng = (size_t)qf_ngroups((int64_t)in, g->qp.group);
		res.lin[k].q = malloc(out * in);
		res.lin[k].sc = malloc(out * ng * sizeof(uint16_t));
		res.lin[k].zero = malloc(out * ng * sizeof(int32_t));
		if (!res.lin[k].q || !res.lin[k].sc || !res.lin[k].zero)
			ret = -ENOMEM;
		if (k == QF_TF_Q)
			lo.fold_in = g->norm != NULL;
		if (k == QF_TF_GATE)
			lo.fold_post = g->norm != NULL;
	}
	if (!ret)
		ret = qf_awq_layer(&j->c, ly, stats, &o, &lo, &res);
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + k];
		const struct qf_vgroup *g;
		void **bufs = j->pending + (size_t)gi * 4;

		if (gi < 0)
			continue;
		g = &v->g[gi];
		ret = emit_group(j, gi, res.lin[k].q, res.lin[k].sc,
				 res.lin[k].zero);
		if (ret < 0)
			break;
		if (g->norm) {
			const struct qf_vtensor *nt = &v->t[g->first + g->n - 1];
			float *norm = k == QF_TF_Q ? ly->in_norm : ly->post_norm;

			/* the layer goes on with the norm as stored, as a
			 * loader (and a resumed job) will see it */
			store_norm(nt, norm, bufs[g->n - 1]);
			qf_to_f32(nt->dtype, bufs[g->n - 1],
				  (size_t)nt->shape[0], norm);
		}
		j->loss[gi] = res.lin[k].loss;
		j->loss_rtn[gi] = res.lin[k].loss_rtn;
		j->alpha[gi] = res.lin[k].alpha;
		j->score[2 * gi] = k == QF_TF_Q && lo.reflip ?
				   res.score_before : -1;
		j->score[2 * gi + 1] = k == QF_TF_Q && lo.reflip ?
				       res.score_after : -1;
	}
	if (!ret && lo.reflip)
		qf_info("%s/%s: layer %d/%d ReFlip: attention-score error "
			"%.5f -> %.5f (%lld flips)", j->var->mdl->name, v->name,
			l + 1, j->var->job->nlayers, res.score_before,
			res.score_after, (long long)res.reflips);
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		free(res.lin[k].q);
		free(res.lin[k].sc);
		free(res.lin[k].zero);
	}
	return ret;
}

static int cb_quantize(void *arg, int l, struct qf_tf_layer *ly,
		       const enum qf_tf_linear *lin, int n,
		       struct qf_lin_stats *stats)
{
	struct job *j = arg;
	int i, ret;

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	if (j->var->v->spec.method == QF_METHOD_AWQ)
		return awq_quantize(j, l, ly, stats);
	if (j->var->v->spec.method == QF_METHOD_KQUANT) {
		/* the importance matrix, mean x^2 per input channel, as
		 * llama.cpp's imatrix tool collects it; weights unchanged */
		size_t at = 0;

		for (i = 0; i < n; i++) {
			const struct qf_lin_stats *st = &stats[lin[i]];
			int64_t c;

			for (c = 0; c < st->in; c++)
				j->imat[at++] = (float)(st->sum_sq[c] /
					(st->n > 0 ? (double)st->n : 1));
		}
		return 0;
	}
	for (i = 0; i < n; i++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + lin[i]];

		if (gi < 0)
			continue;	/* kept in the source dtype */
		ret = quantize_linear(j, gi, ly->w[lin[i]], &stats[lin[i]]);
		if (ret < 0)
			return ret;
	}
	return 0;
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
 * BRECQ of layer l (quant/brecq.c): learned rounding of its linears
 * against the full-precision layer's output y on the quantized model's
 * input x; the codes into j->pending.
 */
static int cb_block(void *arg, int l, struct qf_tf_layer *ly, const float *x,
		    const float *y, int nseq, int seqlen)
{
	struct job *j = arg;
	const struct qf_variant *v = j->var->v;
	struct qf_brecq_opts o;
	struct qf_brecq_result res = { 0 };
	uint8_t *q[QF_TF_NLINEAR] = { NULL };
	uint16_t *sc[QF_TF_NLINEAR] = { NULL };
	int32_t *z[QF_TF_NLINEAR] = { NULL };
	int64_t ntok = (int64_t)nseq * seqlen, i;
	double ey = 0;
	int k, ret = 0;

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	qf_brecq_opts_default(&o);
	o.iters = j->var->ci.brecq_iters;
	if (j->fs->o.brecq_batch > 0)
		o.batch_seqs = j->fs->o.brecq_batch;
	o.seed = (uint64_t)l;
	o.progress = brecq_progress;
	o.arg = j;
	o.every = 50;
	j->layer = l;
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + k];
		const struct qf_vgroup *g = gi >= 0 ? &v->g[gi] : NULL;
		size_t out, in, ng;

		if (!g) {
			o.qp[k].bits = 16;	/* kept in the source dtype */
			continue;
		}
		o.qp[k] = g->qp;
		out = (size_t)g->w->t->shape[0];
		in = (size_t)g->w->t->shape[1];
		ng = (size_t)qf_ngroups((int64_t)in, g->qp.group);
		q[k] = malloc(out * in);
		sc[k] = malloc(out * ng * sizeof(uint16_t));
		z[k] = malloc(out * ng * sizeof(int32_t));
		if (!q[k] || !sc[k] || !z[k])
			ret = -ENOMEM;
	}
	if (!ret)
		ret = qf_brecq_block(&j->c, l, ly, x, y, nseq, seqlen, &o, q, sc,
				     z, &res);
	for (i = 0; i < ntok * j->c.hidden; i++)
		ey += (double)y[i] * y[i];
	ey /= (double)(ntok * j->c.hidden);
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + k];

		if (gi < 0)
			continue;
		ret = emit_group(j, gi, q[k], sc[k], z[k]);
		if (ret < 0)
			break;
		/* the block's relative output error, for each of its linears */
		j->loss[gi] = ey > 0 ? res.mse_final / ey : 0;
		j->loss_rtn[gi] = ey > 0 ? res.mse_rtn / ey : 0;
		j->alpha[gi] = j->score[2 * gi] = j->score[2 * gi + 1] = -1;
	}
	if (!ret)
		qf_info("%s/%s: layer %d/%d BRECQ: block output error %.4g -> "
			"%.4g (relative; round to nearest -> learned rounding), "
			"%d steps in %.1f s", j->var->mdl->name, v->name, l + 1,
			j->var->job->nlayers, ey > 0 ? res.mse_rtn / ey : 0,
			ey > 0 ? res.mse_final / ey : 0, res.iters,
			res.seconds);
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		free(q[k]);
		free(sc[k]);
		free(z[k]);
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
		int64_t out, in, ng, r, c;
		uint8_t *q;
		uint16_t *sc;
		int32_t *z, *gidx;

		if (gi < 0)
			continue;
		g = &var->v->g[gi];
		out = g->w->t->shape[0];
		in = g->w->t->shape[1];
		ng = qf_ngroups(in, g->qp.group);
		q = malloc((size_t)(out * in));
		sc = malloc((size_t)(out * ng) * 2);
		z = malloc((size_t)(out * ng) * 4);
		gidx = malloc((size_t)in * 4);
		ret = q && sc && z && gidx ?
		      qf_flight_unpack(j->fs, var->vid, var->v, (size_t)gi, q,
				       sc, z, gidx) :
		      -ENOMEM;
		/* the same float expression qf_gptq_quantize leaves in w */
		for (r = 0; r < out && !ret; r++)
			for (c = 0; c < in; c++) {
				int64_t x = r * ng + gidx[c];

				ly->w[k][r * in + c] = qf_f16_to_f32(sc[x]) *
					((float)q[r * in + c] - (float)z[x]);
			}
		/* AWQ: the norm that absorbed this group's scales */
		if (!ret && g->norm)
			ret = qf_flight_get_f32(j->fs, var->vid,
						&var->v->t[g->first + g->n - 1],
						k == QF_TF_Q ?
					      ly->in_norm : ly->post_norm);
		if (ret < 0)
			qf_err("%s/%s: cannot replay %s from the cache: %s",
			       var->mdl->name, var->v->name, g->w->name,
			       qf_strerror(ret));
		free(q);
		free(sc);
		free(z);
		free(gidx);
	}
	return ret;
}

/* Commit layer l: its tensors and its loss record, one transaction. */
static int cb_layer_done(void *arg, int l, const float *x, int64_t ntok,
			 double seconds)
{
	struct job *j = arg;
	struct qf_var *var = j->var;
	struct qf_cache_item items[QF_TF_NLINEAR * 4 + 2];
	double rec[QF_TF_NLINEAR * REC];
	double sum_g = 0, sum_r = 0, eta;
	char recname[32], imname[32];
	size_t n = 0;
	int k, m = 0, ret;
	uint32_t t;

	(void)x, (void)ntok;
	if (l < j->first)
		return 0;		/* replayed, already in the cache */
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
			items[n].data = j->pending[(size_t)gi * 4 + t];
			items[n].len = qf_vtensor_bytes(vt);
			n++;
		}
		rec[REC * k] = j->loss[gi];
		rec[REC * k + 1] = j->loss_rtn[gi];
		rec[REC * k + 2] = j->alpha[gi];
		rec[REC * k + 3] = j->score[2 * gi];
		rec[REC * k + 4] = j->score[2 * gi + 1];
		sum_g += j->loss[gi];
		sum_r += j->loss_rtn[gi];
		m++;
	}
	snprintf(recname, sizeof(recname), "__layer__.%d", l);
	items[n++] = (struct qf_cache_item){ recname, rec, sizeof(rec) };
	if (var->v->spec.method == QF_METHOD_KQUANT) {
		snprintf(imname, sizeof(imname), "__imatrix__.%d", l);
		items[n++] = (struct qf_cache_item){ imname, j->imat,
			qf_kq_imatrix_len(&j->c) * sizeof(float) };
	}
	eta = qf_now();
	ret = qf_fs_cache_put(j->fs, var->vid, items, n);
	j->commit_s += qf_now() - eta;
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		int gi = var->job->lin_group[l * QF_TF_NLINEAR + k];

		for (t = 0; gi >= 0 && t < 4; t++) {
			free(j->pending[(size_t)gi * 4 + t]);
			j->pending[(size_t)gi * 4 + t] = NULL;
		}
	}
	if (ret < 0)
		return ret;
	/* log first: a reader woken below may look for this line */
	eta = (qf_now() - j->t0) / (l + 1 - j->first) *
	      (var->job->nlayers - l - 1);
	if (var->v->spec.method == QF_METHOD_KQUANT)
		qf_info("%s/%s: layer %d/%d imatrix in %.2f s, eta %.0f s",
			var->mdl->name, var->v->name, l + 1, var->job->nlayers,
			seconds, eta);
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
	return 0;
}

/* ------------------------------------------------------------------ */
/* the job thread                                                      */

/*
 * Render var's quantization.json with the results of b (var itself, or
 * the packed variant a _fake one dequantizes) and publish it.  Only
 * fixed-width numbers change, so the size stays what stat reported.
 * Caller holds var->lock.
 */
static int render_final(struct qf_var *var, const struct qf_var *b)
{
	struct qf_buf out = QF_BUF_INIT;
	struct qf_calib_info ci = b->ci;
	int ret;

	ci.loss = b->job->res_loss;
	ci.loss_rtn = b->job->res_rtn;
	ci.alpha = b->job->res_alpha;
	ci.score = b->job->res_score;
	ci.seconds = b->job->res_seconds;
	memcpy(ci.hash, b->job->res_hash, sizeof(ci.hash));
	ret = qf_variant_manifest(var->v, &ci, &out);
	if (!ret && out.len != var->manifest.len) {
		qf_err("%s/%s: quantization.json changed size", var->mdl->name,
		       var->v->name);
		ret = QF_ECORRUPT;
	}
	if (!ret) {
		struct qf_buf old = var->manifest;

		var->manifest = out;	/* readers wait for manifest_ready */
		out = old;
		var->manifest_ready = true;
	}
	qf_buf_release(&out);
	return ret;
}

/* The results, from the layer records in the cache. */
static int finalize(struct qf_fs *fs, struct qf_var *var, double seconds)
{
	size_t ng = var->v->ng ? var->v->ng : 1;
	double *loss = calloc(ng, sizeof(double));
	double *rtn = calloc(ng, sizeof(double));
	double *alpha = calloc(ng, sizeof(double));
	double *score = calloc(2 * ng, sizeof(double));
	struct qf_cache_txn *txn = NULL;
	bool store_time = false;
	char hash[65];
	int l, k, ret;

	memcpy(hash, var->ci.hash, sizeof(hash));
	ret = loss && rtn && alpha && score ?
	      qf_cache_read_begin(fs->cache, &txn) : -ENOMEM;
	for (l = 0; l < var->job->nlayers && !ret; l++) {
		double rec[QF_TF_NLINEAR * REC];
		const void *p;
		char name[32];
		size_t len;
		int w = REC;

		snprintf(name, sizeof(name), "__layer__.%d", l);
		ret = qf_cache_get(txn, var->vid, name, &p, &len);
		if (!ret && len == QF_TF_NLINEAR * REC_OLD * sizeof(double))
			w = REC_OLD;
		else if (!ret && len != sizeof(rec))
			ret = QF_ECORRUPT;
		if (!ret)	/* LMDB values are not aligned */
			memcpy(rec, p, len);
		for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
			int gi = var->job->lin_group[l * QF_TF_NLINEAR + k];

			if (gi < 0)
				continue;
			loss[gi] = rec[w * k];
			rtn[gi] = rec[w * k + 1];
			alpha[gi] = w == REC ? rec[w * k + 2] : -1;
			score[2 * gi] = w == REC ? rec[w * k + 3] : -1;
			score[2 * gi + 1] = w == REC ? rec[w * k + 4] : -1;
		}
	}
	if (!ret) {
		const void *tk;
		size_t len;

		/* the first production's time, not a later replay's */
		if (qf_cache_get(txn, var->vid, "__seconds__", &tk, &len) == 0
		    && len == sizeof(double))
			memcpy(&seconds, tk, sizeof(double));
		else
			store_time = true;

		/* the token hash, from the cached set */
		if (qf_cache_get(txn, var->calib_vid, "__ids__", &tk,
				 &len) == 0 &&
		    len == (size_t)var->ci.nseq * var->ci.seqlen * 4) {
			struct qf_calib cs = {
				.ids = malloc(len),	/* aligned copy */
				.nseq = var->ci.nseq,
				.seqlen = var->ci.seqlen,
			};

			if (cs.ids) {
				memcpy(cs.ids, tk, len);
				qf_calib_hash(&cs);
				memcpy(hash, cs.hash_hex, sizeof(hash));
			}
			qf_calib_free(&cs);
		}
	}
	qf_cache_read_end(txn);
	if (!ret && store_time) {
		struct qf_cache_item it = { "__seconds__", &seconds,
					    sizeof(seconds) };

		ret = qf_fs_cache_put(fs, var->vid, &it, 1);
	}
	pthread_mutex_lock(&var->lock);
	if (!ret && !var->manifest_ready) {
		free(var->job->res_loss);
		free(var->job->res_rtn);
		free(var->job->res_alpha);
		free(var->job->res_score);
		var->job->res_loss = loss;
		var->job->res_rtn = rtn;
		var->job->res_alpha = alpha;
		var->job->res_score = score;
		var->job->res_seconds = seconds;
		memcpy(var->job->res_hash, hash, sizeof(hash));
		loss = rtn = alpha = score = NULL;
		ret = render_final(var, var);
	}
	pthread_mutex_unlock(&var->lock);
	free(loss);
	free(rtn);
	free(alpha);
	free(score);
	return ret;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct qf_var *var = j->var;
	struct qf_fs *fs = j->fs;
	struct qf_calib cs = { 0 };
	const struct qf_spec *sp = &var->v->spec;
	bool awq = sp->method == QF_METHOD_AWQ;
	bool kq = sp->method == QF_METHOD_KQUANT;
	bool brecq = sp->method == QF_METHOD_BRECQ;
	struct qf_calib_ops ops = {
		.hessian = !kq && !brecq,
		.block = brecq ? cb_block : NULL,
		/* GPTQ: true sequential; AWQ: statistics of the layer as
		 * it is, all seven linears at once (scales couple them);
		 * kq: the imatrix of the unchanged model */
		.sequential = !awq && !kq,
		.whole_layer = awq || kq,
		.sample_rows = awq && (sp->flags & QF_SPEC_REFLIP) ?
			       QF_REFLIP_SAMPLE : 0,
		.quantize = cb_quantize,
		.layer_cached = cb_cached,
		.layer_done = cb_layer_done,
		.stats_seconds = &j->stats_s,
	};
	double total;
	bool locked = false, queued;
	size_t i;
	int ret = 0;

	/* -o max_jobs: wait for a slot (queued jobs show in status) */
	set_phase(var, "queued");
	pthread_mutex_lock(&fs->job_lock);
	while (fs->nrunning >= (fs->o.max_jobs > 0 ? fs->o.max_jobs : 1) &&
	       !fs->stopping)
		pthread_cond_wait(&fs->job_cond, &fs->job_lock);
	queued = !fs->stopping;
	if (queued)
		fs->nrunning++;
	else
		ret = -EINTR;
	pthread_mutex_unlock(&fs->job_lock);
	/* a fixed thread count: the same bytes on every run of a machine */
	openblas_set_num_threads((int)sysconf(_SC_NPROCESSORS_ONLN));
	j->t0 = qf_now();
	/* one job per variant on the machine: wait for another process's,
	 * then see what it left in the cache */
	set_phase(var, "waiting for another process");
	if (!ret) {
		ret = qf_flight_lock(fs, &var->fl, QF_LOCK_JOB);
		locked = ret == 0;
		ret = ret == -EINTR ? -EINTR : 0;
	}
	j->t0 = qf_now();
	for (j->first = 0; j->first < var->job->nlayers &&
			   layer_complete(fs, var, j->first); j->first++)
		;
	if (j->first > 0 && j->first < var->job->nlayers)
		qf_info("%s/%s: resuming at layer %d/%d", var->mdl->name,
			var->v->name, j->first + 1, var->job->nlayers);
	pthread_mutex_lock(&var->lock);
	var->job->first = j->first;
	var->job->layers_done = j->first > var->job->layers_done ? j->first :
							  var->job->layers_done;
	pthread_mutex_unlock(&var->lock);
	if (!ret && j->first < var->job->nlayers) {
		set_phase(var, "preparing the calibration set");
		ret = qf_tf_config_parse(var->mdl->m, &j->c);
		if (!ret)
			ret = calib_set(j, &cs);
		if (!ret && kq && !(j->imat = malloc(qf_kq_imatrix_len(&j->c) *
						      sizeof(float))))
			ret = -ENOMEM;
		pthread_mutex_lock(&var->lock);
		var->job->phase = "quantizing layers";
		var->job->first_t = qf_now();
		pthread_mutex_unlock(&var->lock);
		if (!ret)
			ret = qf_calib_run(var->mdl->m, &j->c, &cs, &ops, j);
	}
	set_phase(var, "writing the results");
	pthread_mutex_lock(&var->lock);
	if (!ret)
		var->job->layers_done = var->job->nlayers;
	pthread_mutex_unlock(&var->lock);
	if (!ret)
		ret = finalize(fs, var, qf_now() - j->t0);
	if (!ret) {
		qf_flight_record(fs, &var->fl);
		qf_cache_sync(fs->cache);
		qf_fs_trim_cache(fs);
		total = qf_now() - j->t0;
		qf_info("%s/%s: done in %.1f s", var->mdl->name, var->v->name,
			total);
		if (j->first < var->job->nlayers && !awq && !kq && !brecq)
			qf_info("%s/%s: X^T X %.1f s, Cholesky %.1f s, column loop "
				"%.1f s, blocked updates %.1f s (%.1f GFLOP/s), rtn "
				"comparison %.1f s, packing %.1f s, LMDB %.1f s, "
				"forward passes, calibration set and the rest %.1f s",
				var->mdl->name, var->v->name, j->stats_s, j->gt.chol,
				j->gt.columns, j->gt.lazy,
				j->gt.lazy > 0 ? j->gt.lazy_flop / j->gt.lazy / 1e9 : 0,
				j->compare_s, j->pack_s, j->commit_s,
				total - j->stats_s - j->gt.chol - j->gt.columns -
				j->gt.lazy - j->compare_s - j->pack_s - j->commit_s);
	} else if (ret != -EINTR) {
		qf_err("%s/%s: production failed: %s", var->mdl->name,
		       var->v->name, qf_strerror(ret));
	}
	if (locked)
		qf_flight_unlock(&var->fl, QF_LOCK_JOB);
	qf_calib_free(&cs);
	free(j->imat);
	for (i = 0; i < var->v->ng * 4; i++)
		free(j->pending[i]);
	free(j->pending);
	free(j->loss);
	free(j->loss_rtn);
	free(j->alpha);
	free(j->score);
	free(j);
	pthread_mutex_lock(&var->lock);
	var->job->running = false;
	var->job->err = ret;
	pthread_cond_broadcast(&var->cond);
	pthread_mutex_unlock(&var->lock);
	pthread_mutex_lock(&fs->job_lock);
	fs->njobs--;
	if (queued)
		fs->nrunning--;
	pthread_cond_broadcast(&fs->job_cond);
	pthread_mutex_unlock(&fs->job_lock);
	return NULL;
}

/* Caller holds var->lock. */
static int start_job(struct qf_fs *fs, struct qf_var *var)
{
	size_t ng = var->v->ng ? var->v->ng : 1;
	struct job *j = calloc(1, sizeof(*j));
	pthread_t th;

	if (!j)
		return -ENOMEM;
	j->fs = fs;
	j->var = var;
	j->pending = calloc(ng * 4, sizeof(*j->pending));
	j->loss = calloc(ng, sizeof(double));
	j->loss_rtn = calloc(ng, sizeof(double));
	j->alpha = calloc(ng, sizeof(double));
	j->score = calloc(2 * ng, sizeof(double));
	pthread_mutex_lock(&fs->job_lock);
	if (fs->stopping || !j->pending || !j->loss || !j->loss_rtn ||
	    !j->alpha || !j->score) {
		pthread_mutex_unlock(&fs->job_lock);
		free(j->pending);
		free(j->loss);
		free(j->loss_rtn);
		free(j->alpha);
		free(j->score);
		free(j);
		return -ESHUTDOWN;
	}
	fs->njobs++;
	pthread_mutex_unlock(&fs->job_lock);
	var->job->running = true;
	var->job->gen++;
	var->job->t0 = qf_now();
	var->job->first_t = var->job->t0;
	var->job->phase = "starting";
	if (pthread_create(&th, NULL, job_main, j) != 0) {
		var->job->running = false;
		pthread_mutex_lock(&fs->job_lock);
		fs->njobs--;
		pthread_mutex_unlock(&fs->job_lock);
		free(j->pending);
		free(j->loss);
		free(j->loss_rtn);
		free(j->alpha);
		free(j->score);
		free(j);
		return -EAGAIN;
	}
	pthread_detach(th);
	return 0;
}

/*
 * Wait (var->lock held) until done() holds, starting a job when none
 * runs; a job that failed while we waited reports its error.
 */
static int wait_job(struct qf_fs *fs, struct qf_var *var,
		    bool (*done)(struct qf_var *, uint32_t), uint32_t gi)
{
	unsigned gen = 0;
	bool waited = false;
	int ret;

	for (;;) {
		if (done(var, gi))
			return 0;
		if (!var->job->running) {
			if (waited && var->job->gen == gen && var->job->err)
				return var->job->err;
			ret = start_job(fs, var);
			if (ret < 0)
				return ret;
			gen = var->job->gen;
		}
		waited = true;
		/* the reader gave up (Ctrl-C) or the mount is going away:
		 * answer EINTR, the job goes on for everyone else */
		if (qf_fs_wait(fs, &var->cond, &var->lock) < 0)
			return -EINTR;
	}
}

static bool group_done(struct qf_var *var, uint32_t gi)
{
	return var->job->group_layer[gi] < var->job->layers_done;
}

static bool manifest_done(struct qf_var *var, uint32_t gi)
{
	(void)gi;
	return var->manifest_ready;
}

int qf_job_ensure(struct qf_fs *fs, struct qf_var *var, uint32_t gi)
{
	int ret;

	if (qf_flight_done(&var->fl, gi))
		return 0;
	pthread_mutex_lock(&var->lock);
	if (group_done(var, gi)) {
		pthread_mutex_unlock(&var->lock);
		return 0;
	}
	pthread_mutex_unlock(&var->lock);
	/* another process or an earlier mount may have produced it */
	if (qf_flight_cached(fs, &var->fl, gi))
		return 0;
	pthread_mutex_lock(&var->lock);
	ret = wait_job(fs, var, group_done, gi);
	pthread_mutex_unlock(&var->lock);
	return ret;
}

bool qf_job_group_done(struct qf_var *var, uint32_t gi)
{
	bool done;

	pthread_mutex_lock(&var->lock);
	done = group_done(var, gi);
	pthread_mutex_unlock(&var->lock);
	return done;
}

void qf_job_forget(struct qf_var *var, uint32_t gi)
{
	pthread_mutex_lock(&var->lock);
	if (var->job->layers_done > var->job->group_layer[gi])
		var->job->layers_done = var->job->group_layer[gi];
	pthread_mutex_unlock(&var->lock);
}

int qf_job_manifest(struct qf_fs *fs, struct qf_var *var)
{
	struct qf_var *b = var->base ? var->base : var;
	int ret;

	pthread_mutex_lock(&b->lock);
	ret = wait_job(fs, b, manifest_done, 0);
	pthread_mutex_unlock(&b->lock);
	if (ret < 0 || !var->base)
		return ret;
	/* b's results are fixed once ready: read them under var's lock */
	pthread_mutex_lock(&var->lock);
	if (!var->manifest_ready)
		ret = render_final(var, b);
	pthread_mutex_unlock(&var->lock);
	return ret;
}

int qf_job_progress(struct qf_var *var, struct qf_buf *out)
{
	struct qf_var *b = var->base ? var->base : var;
	double now = qf_now(), el, eta = -1;
	int done, n, first;
	const char *state;

	pthread_mutex_lock(&b->lock);
	done = b->job->layers_done;
	n = b->job->nlayers;
	first = b->job->first;
	el = b->job->running ? now - b->job->t0 : 0;
	if (b->job->running && done > first)
		eta = (now - b->job->first_t) / (done - first) * (n - done);
	state = b->job->running ? b->job->phase : b->manifest_ready ? "done" :
		b->job->err ? "failed" : done == n ? "done" : "idle";
	pthread_mutex_unlock(&b->lock);
	qf_buf_reset(out);
	qf_buf_addf(out, "{\"model\": \"%s\", \"variant\": \"%s\", "
		    "\"state\": \"%s\", \"layers_done\": %d, \"layers\": %d, "
		    "\"elapsed_s\": %.1f, \"eta_s\": ", var->mdl->name,
		    var->v->name, state, done, n, el);
	if (eta >= 0)
		qf_buf_addf(out, "%.0f, \"layers_per_min\": %.2f}", eta,
			    (done - first) / ((now - b->job->first_t) / 60));
	else
		qf_buf_adds(out, "null, \"layers_per_min\": null}");
	return out->data ? 0 : -ENOMEM;
}

void qf_job_stop_all(struct qf_fs *fs)
{
	pthread_mutex_lock(&fs->job_lock);
	fs->stopping = true;
	pthread_cond_broadcast(&fs->job_cond);	/* queued jobs give up */
	while (fs->njobs > 0)
		pthread_cond_wait(&fs->job_cond, &fs->job_lock);
	pthread_mutex_unlock(&fs->job_lock);
}

/* ------------------------------------------------------------------ */
/* mixed precision: measured sensitivities and the allocation          */

/* Candidate precisions: the GPTQ containers, and 16 (kept).  A 6-bit
 * grid costs the 8-bit container's bytes with more error: dominated. */
static const int mixed_bits[] = { 2, 3, 4, 8, 16 };
#define NMB 5
#define SENS_REC (NMB + 2)	/* costs, then act and weight signals */
#define MIXED_GROUP 128

/* Sensitivities of the layer's linears; the weights stay as they are. */
static int cb_sens(void *arg, int l, struct qf_tf_layer *ly,
		   const enum qf_tf_linear *lin, int n,
		   struct qf_lin_stats *stats)
{
	struct job *j = arg;
	int i, ret;

	if (qf_fs_stopping(j->fs))
		return -EINTR;
	for (i = 0; i < n; i++) {
		int gi = j->var->job->lin_group[l * QF_TF_NLINEAR + lin[i]];
		const struct qf_vgroup *g;
		struct qf_mixed_signals sig;
		double *rec;

		if (gi < 0)
			continue;
		g = &j->var->v->g[gi];
		rec = j->sens + (size_t)gi * SENS_REC;
		ret = qf_mixed_sensitivity(ly->w[lin[i]], g->w->t->shape[0],
					   g->w->t->shape[1], stats[lin[i]].h,
					   mixed_bits, NMB, MIXED_GROUP, false,
					   rec);
		if (ret < 0)
			return ret;
		qf_mixed_signals_of(ly->w[lin[i]], g->w->t->shape[0],
				    g->w->t->shape[1], &stats[lin[i]], &sig);
		rec[NMB] = sig.act;
		rec[NMB + 1] = sig.weight;
	}
	return 0;
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

/* GPTQ checkpoint bytes of a linear at bits (16: the source dtype). */
static double ckpt_bytes(const struct qf_model_tensor *w, int bits)
{
	int64_t out = w->t->shape[0], in = w->t->shape[1];
	int64_t ng = qf_ngroups(in, MIXED_GROUP);
	int pb = qf_pack_bits(bits);

	if (bits >= 16)
		return (double)w->t->nbytes;
	if (!qf_gptq_packable(pb, in, out))
		return -1;
	return (double)out * in * pb / 8 + (double)ng * out * pb / 8 +
	       (double)ng * out * 2 + (double)in * 4;
}

static int loss_done(void *arg, int l, double seconds)
{
	struct job *j = arg;

	qf_info("%s: mixed precision: loss of each unit of layer %d/%d at "
		"each width in %.2f s", j->var->mdl->name, l + 1,
		j->var->job->nlayers, seconds);
	return qf_fs_stopping(j->fs) ? -EINTR : 0;
}

#define LOSS_SEQS 8		/* calibration sequences the loss runs on */

/*
 * The sensitivity tables, from the cache or measured and stored: per
 * linear its relative output errors and signals (sens), per unit the
 * loss increase (uloss [nlayers * 4][NMB]).
 */
static int mixed_table(struct qf_fs *fs, struct qf_var *probe,
		       double *sens, double *uloss)
{
	static const int unit_of[QF_TF_NLINEAR] = { 0, 0, 0, 1, 2, 2, 3 };
	size_t want = probe->v->ng * SENS_REC * sizeof(double);
	size_t uwant = (size_t)probe->job->nlayers * 4 * NMB * sizeof(double);
	struct qf_cache_item its[2];
	double ref = 0;
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
	};
	const void *p;
	size_t len;
	bool hit = false;
	double t0 = qf_now();
	int ret;

	qf_hex(probe->calib_vid, QF_CACHE_VID, calib_hex);
	parts[0] = "quantfs-mixed-sensitivity-v2";
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
		NMB);
	ret = qf_tf_config_parse(probe->mdl->m, &j.c);
	if (!ret)
		ret = calib_set(&j, &cs);
	if (!ret)
		ret = qf_calib_run(probe->mdl->m, &j.c, &cs, &ops, &j);
	if (!ret)
		ret = qf_mixed_loss_table(probe->mdl->m, &j.c, cs.ids,
					  cs.nseq < LOSS_SEQS ? cs.nseq :
					  LOSS_SEQS, cs.seqlen, unit_of, 4,
					  mixed_bits, NMB, MIXED_GROUP, uloss,
					  &ref, loss_done, &j);
	qf_calib_free(&cs);
	if (ret < 0)
		return ret;
	its[0] = (struct qf_cache_item){ "__sens__", sens, want };
	its[1] = (struct qf_cache_item){ "__uloss__", uloss, uwant };
	ret = qf_fs_cache_put(fs, vid, its, 2);
	qf_info("%s: mixed precision: sensitivities measured in %.1f s",
		probe->mdl->name, qf_now() - t0);
	return ret;
}

int qf_mixed_alloc_bits(void *arg, const char *name)
{
	const struct qf_mixed_alloc *a = arg;
	size_t i;

	for (i = 0; i < a->n; i++)
		if (!strcmp(a->names[i], name))
			return a->bits[i];
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
	free(a->json);
	free(a);
}

/*
 * Units share a precision: q/k/v and gate/up are fused by loaders
 * (vLLM needs one precision per fused shard set), o and down alone.
 */
static int unit_of(enum qf_tf_linear k)
{
	return k <= QF_TF_V ? 0 : k == QF_TF_O ? 1 : k <= QF_TF_UP ? 2 : 3;
}

static void alloc_json(struct qf_mixed_alloc *a, const struct qf_spec *spec,
		       const struct qf_var *probe, const int *ubits,
		       const double *ucost, const double *uerr, size_t nu,
		       const struct qf_mixed_budget_res *br)
{
	cJSON *o = cJSON_CreateObject(), *arr;
	size_t u;

	cJSON_AddStringToObject(o, "policy", spec->method ==
				QF_METHOD_MIXED_BUDGET ? "budget" : "ratio");
	if (spec->method == QF_METHOD_MIXED_BUDGET) {
		cJSON_AddNumberToObject(o, "avg_bits",
					spec->avg_bits_x100 / 100.0);
		cJSON_AddStringToObject(o, "algorithm",
			"multiple-choice knapsack: minimize the sum of the "
			"units' measured loss increases subject to "
			"8 * stored bytes <= avg_bits * parameters of the "
			"quantizable linears; LP bound, then branch and bound");
		cJSON_AddNumberToObject(o, "budget_bytes",
					(double)br->budget_bytes);
		cJSON_AddNumberToObject(o, "bytes", (double)br->bytes);
		cJSON_AddNumberToObject(o, "objective", br->cost);
		cJSON_AddNumberToObject(o, "lower_bound", br->bound);
		cJSON_AddBoolToObject(o, "optimal", br->optimal);
	} else {
		cJSON_AddStringToObject(o, "algorithm",
			"the seed's ratio policy over units ranked by "
			"importance 0.3 z(mean x^2) + 0.2 z(mean |W|): top 20 % "
			"16 bits, bottom 40 % 4 bits, the rest 8 bits");
	}
	cJSON_AddStringToObject(o, "units",
		"per decoder layer: {q,k,v}, {o}, {gate,up}, {down} share a "
		"precision (fused by loaders)");
	cJSON_AddStringToObject(o, "sensitivity",
		"unit_cost: increase of the mean next-token loss (nats) on the "
		"first 8 calibration sequences when only that unit is rounded "
		"to nearest at its width (group 128), the rest fp32; "
		"unit_output_error: the sum of its linears' relative output "
		"errors tr(dW H dW^T) / tr(W H W^T), H = X^T X on the "
		"calibration set through the unquantized model");
	cJSON_AddStringToObject(o, "calibration_set", probe->ci.key);
	arr = cJSON_AddArrayToObject(o, "unit_bits");
	for (u = 0; u < nu; u++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(ubits[u]));
	arr = cJSON_AddArrayToObject(o, "unit_cost");
	for (u = 0; u < nu; u++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(ucost[u]));
	arr = cJSON_AddArrayToObject(o, "unit_output_error");
	for (u = 0; u < nu; u++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(uerr[u]));
	a->json = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
}

/*
 * A stand-in variant for measuring: every linear the 8-bit container can
 * hold, spec's calibration set, the layer maps; logs name spec.
 */
static int probe_new(struct qf_fs *fs, struct qf_mdl *mdl,
		     const struct qf_spec *spec, struct qf_var **out)
{
	struct qf_spec s8 = { .method = QF_METHOD_RTN, .bits = 8,
			      .group = MIXED_GROUP };
	struct qf_var *probe = calloc(1, sizeof(*probe));
	int ret;

	*out = probe;
	if (!probe)
		return -ENOMEM;
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

int qf_job_mixed_prepare(struct qf_fs *fs, struct qf_mdl *mdl,
			 const struct qf_spec *spec)
{
	struct qf_var *probe = NULL;
	double *sens = NULL, *uloss = NULL;
	int ret;

	pthread_mutex_lock(&fs->sens_lock);
	ret = probe_new(fs, mdl, spec, &probe);
	if (!ret) {
		sens = calloc(probe->v->ng * SENS_REC + 1, sizeof(*sens));
		uloss = calloc((size_t)probe->job->nlayers * 4 * NMB + 1,
			       sizeof(*uloss));
		ret = sens && uloss ? mixed_table(fs, probe, sens, uloss) :
				      -ENOMEM;
	}
	pthread_mutex_unlock(&fs->sens_lock);
	free(sens);
	free(uloss);
	probe_free(probe);
	return ret;
}

int qf_job_mixed_alloc(struct qf_fs *fs, struct qf_mdl *mdl,
		       const struct qf_spec *spec, struct qf_mixed_alloc **out)
{
	struct qf_var *probe = NULL;
	struct qf_mixed_alloc *a = calloc(1, sizeof(*a));
	struct qf_mixed_budget_res br = { 0 };
	double *sens = NULL, *ucost = NULL, *ubytes = NULL, *imp = NULL;
	double *uloss = NULL, *uerr = NULL;
	double *uimp = NULL, *uc = NULL, *ue = NULL;
	uint64_t *up = NULL, *ub = NULL;
	int *ubits = NULL, *choice = NULL, *unit = NULL;
	size_t ng = 0, nu, i, u;
	int ret, p;

	ret = a ? probe_new(fs, mdl, spec, &probe) : -ENOMEM;
	if (ret < 0)
		goto out;
	ng = probe->v->ng;
	nu = (size_t)probe->job->nlayers * 4;
	sens = calloc(ng * SENS_REC + 1, sizeof(*sens));
	ucost = calloc(nu * NMB + 1, sizeof(*ucost));
	uloss = calloc(nu * NMB + 1, sizeof(*uloss));
	uerr = calloc(nu * NMB + 1, sizeof(*uerr));
	ubytes = calloc(nu * NMB + 1, sizeof(*ubytes));
	up = calloc(nu + 1, sizeof(*up));
	ub = calloc(nu * NMB + 1, sizeof(*ub));
	uc = calloc(nu + 1, sizeof(*uc));
	ue = calloc(nu + 1, sizeof(*ue));
	ubits = calloc(nu + 1, sizeof(*ubits));
	choice = calloc(nu + 1, sizeof(*choice));
	unit = calloc(ng + 1, sizeof(*unit));
	imp = calloc(ng + 1, sizeof(*imp));
	uimp = calloc(nu + 1, sizeof(*uimp));
	a->names = calloc(ng + 1, sizeof(*a->names));
	a->bits = calloc(ng + 1, sizeof(*a->bits));
	if (!sens || !ucost || !ubytes || !up || !ub || !uc || !ue || !ubits ||
	    !uloss || !uerr ||
	    !choice || !unit || !imp || !uimp || !a->names || !a->bits) {
		ret = -ENOMEM;
		goto out;
	}
	ret = mixed_table(fs, probe, sens, uloss);
	if (ret < 0)
		goto out;
	/* per unit: summed costs, bytes and parameters */
	for (i = 0; i < ng; i++) {
		const struct qf_vgroup *g = &probe->v->g[i];
		int l = probe->job->group_layer[i], k;

		for (k = 0; k < QF_TF_NLINEAR; k++)
			if (probe->job->lin_group[l * QF_TF_NLINEAR + k] ==
			    (int)i)
				break;
		unit[i] = l * 4 + unit_of((enum qf_tf_linear)k);
		up[unit[i]] += (uint64_t)qf_st_numel(g->w->t);
		for (p = 0; p < NMB; p++) {
			double b = ckpt_bytes(g->w, mixed_bits[p]);
			size_t x = (size_t)unit[i] * NMB + p;

			if (b < 0 || ubytes[x] < 0)
				ubytes[x] = -1;
			else
				ubytes[x] += b;
			uerr[x] += sens[i * SENS_REC + p];
		}
	}
	/*
	 * The knapsack's cost: the measured loss increase of each unit, at
	 * least 0 and never lower at fewer bits (noise would otherwise buy
	 * a narrower width for free)
	 */
	for (u = 0; u < nu; u++)
		for (p = NMB - 1; p >= 0; p--) {
			size_t x = u * NMB + (size_t)p;
			double c = uloss[x] > 0 ? uloss[x] : 0;

			if (p < NMB - 1 && c < ucost[x + 1])
				c = ucost[x + 1];
			ucost[x] = c;
		}
	for (u = 0; u < nu * NMB; u++)
		if (ubytes[u] < 0)
			ucost[u] = INFINITY;
	for (u = 0; u < nu * NMB; u++)
		ub[u] = ubytes[u] < 0 ? UINT64_MAX / 4 : (uint64_t)ubytes[u];
	if (spec->method == QF_METHOD_MIXED_BUDGET) {
		ret = qf_mixed_budget(nu, NMB, up, ub, ucost,
				      spec->avg_bits_x100, QF_MIXED_MAX_NODES,
				      choice, &br);
		if (ret < 0) {
			double least = 0, np_ = 0;

			/* what the narrowest packable widths need */
			for (u = 0; u < nu; u++) {
				double m = INFINITY;

				for (p = 0; p < NMB; p++)
					if (ubytes[u * NMB + p] >= 0 &&
					    ubytes[u * NMB + p] < m)
						m = ubytes[u * NMB + p];
				least += up[u] ? m : 0;
				np_ += (double)up[u];
			}
			qf_err("%s: %s: no allocation fits %.2f bits per "
			       "parameter; the narrowest widths the linears' "
			       "shapes can be packed at need %.2f", mdl->name,
			       probe->v->name, spec->avg_bits_x100 / 100.0,
			       np_ > 0 ? 8 * least / np_ : 0);
			goto out;
		}
		for (u = 0; u < nu; u++)
			ubits[u] = mixed_bits[choice[u]];
	} else {
		struct qf_mixed_signals *sig = calloc(ng + 1, sizeof(*sig));
		struct qf_mixed_ratio r;
		double *cnt = calloc(nu + 1, sizeof(*cnt));

		ret = sig && cnt ? 0 : -ENOMEM;
		for (i = 0; i < ng && !ret; i++) {
			sig[i].act = sens[i * SENS_REC + NMB];
			sig[i].weight = sens[i * SENS_REC + NMB + 1];
		}
		if (!ret)
			ret = qf_mixed_importance(sig, ng, imp);
		for (i = 0; i < ng && !ret; i++) {
			uimp[unit[i]] += imp[i];
			cnt[unit[i]] += 1;
		}
		for (u = 0; u < nu && !ret; u++)
			uimp[u] = cnt[u] > 0 ? uimp[u] / cnt[u] : -INFINITY;
		r = fs->mratio;
		if (!ret)
			ret = qf_mixed_ratio_assign(&r, uimp, nu, ubits);
		/* a unit whose linears cannot hold a width keeps 16 */
		for (u = 0; u < nu && !ret; u++)
			for (p = 0; p < NMB; p++)
				if (mixed_bits[p] == ubits[u] &&
				    ubytes[u * NMB + p] < 0)
					ubits[u] = 16;
		free(sig);
		free(cnt);
		if (ret < 0)
			goto out;
	}
	/* the chosen width's cost and output error of each unit */
	for (u = 0; u < nu; u++)
		for (p = 0; p < NMB; p++)
			if (mixed_bits[p] == ubits[u]) {
				uc[u] = ucost[u * NMB + p];
				ue[u] = uerr[u * NMB + p];
			}
	for (i = 0; i < ng; i++) {
		a->names[i] = strdup(probe->v->g[i].w->name);
		a->bits[i] = ubits[unit[i]];
		if (!a->names[i]) {
			ret = -ENOMEM;
			goto out;
		}
		a->n = i + 1;
	}
	memcpy(a->calib_vid, probe->calib_vid, QF_CACHE_VID);
	alloc_json(a, spec, probe, ubits, uc, ue, nu, &br);
	ret = a->json ? 0 : -ENOMEM;
out:
	probe_free(probe);
	free(sens);
	free(uloss);
	free(uerr);
	free(ucost);
	free(ubytes);
	free(up);
	free(ub);
	free(uc);
	free(ue);
	free(ubits);
	free(choice);
	free(unit);
	free(imp);
	free(uimp);
	if (ret < 0) {
		qf_mixed_alloc_free(a);
		a = NULL;
	}
	*out = a;
	return ret;
}
