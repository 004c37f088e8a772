/*
 * job.c - production of calibrated variants (GPTQ, AWQ, BRECQ, GPTQ at
 * mixed_b's and mixed_dyn's widths, the k-quant imatrix): scheduling the
 * jobs, waiting for them, and the results.
 *
 * One job per variant at a time walks the decoder layers in order on the
 * calibration set (quant/calib.c): each layer's linears are quantized
 * with the statistics of the already-quantized layers' outputs (true
 * sequential), and the layer's tensors are committed to the cache in one
 * transaction, with a record of its losses (job_layer.c).  Readers wait
 * for the layer that holds their tensors.  A killed daemon resumes at
 * the first layer not in the cache: the layers before it are replayed
 * from their cached weights.  BLAS runs with a fixed thread count (the
 * online CPUs) for the same reason: OpenBLAS partitions work statically,
 * so a given count gives the same bits every run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "job_i.h"

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
	ci.tokens = b->job->res_tokens;
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

/*
 * Layer l's "__layer__.N" record into the per-group arrays ([ng], score
 * [ng][2]); a record of the old width leaves alpha and score -1.
 */
static int read_record(struct qf_cache_txn *txn, const struct qf_var *var,
		       int l, double *loss, double *rtn, double *alpha,
		       double *score)
{
	double rec[QF_TF_NLINEAR * REC];
	const void *p;
	char name[32];
	size_t len;
	int k, w = REC, ret;

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
	return ret;
}

/* A MoE layer's "__experts__.N" record into the per-group arrays. */
static int read_experts(struct qf_cache_txn *txn, const struct qf_var *var,
			int l, double *loss, double *rtn, double *tokens,
			double *alpha)
{
	size_t nx = (size_t)var->job->nexp * QF_MOE_NLINEAR, k, w;
	double *rec = malloc(nx * EXP_REC * sizeof(double));
	const void *p;
	char name[32];
	size_t len;
	int ret, gi;

	snprintf(name, sizeof(name), "__experts__.%d", l);
	ret = rec ? qf_cache_get(txn, var->vid, name, &p, &len) : -ENOMEM;
	if (ret == -ENOENT) {	/* a dense layer */
		free(rec);
		return 0;
	}
	w = ret ? 0 : len / (nx ? nx * sizeof(double) : 1);
	if (!ret && ((w != EXP_REC && w != EXP_REC_OLD) ||
		     len != w * nx * sizeof(double)))
		ret = QF_ECORRUPT;
	if (!ret)	/* LMDB values are not aligned */
		memcpy(rec, p, len);
	for (k = 0; k < nx && !ret; k++) {
		gi = qf_job_exp_group(var->job, l, (int)(k / QF_MOE_NLINEAR),
				      (int)(k % QF_MOE_NLINEAR));
		if (gi < 0)
			continue;
		loss[gi] = rec[w * k];
		rtn[gi] = rec[w * k + 1];
		tokens[gi] = rec[w * k + 2];
		alpha[gi] = w == EXP_REC ? rec[w * k + 3] : -1;
	}
	free(rec);
	return ret;
}

/* The token hash of var's calibration set, from the cached set (hash
 * is left as it is when the set is not there). */
static void read_calib_hash(struct qf_cache_txn *txn,
			    const struct qf_var *var, char hash[65])
{
	const void *tk;
	size_t len;

	if (qf_cache_get(txn, var->calib_vid, "__ids__", &tk, &len) == 0 &&
	    len == (size_t)var->ci.nseq * var->ci.seqlen * 4) {
		struct qf_calib cs = {
			.ids = malloc(len),	/* aligned copy */
			.nseq = var->ci.nseq,
			.seqlen = var->ci.seqlen,
		};

		if (cs.ids) {
			memcpy(cs.ids, tk, len);
			qf_calib_hash(&cs);
			memcpy(hash, cs.hash_hex, 65);
		}
		qf_calib_free(&cs);
	}
}

/* The results, from the layer records in the cache. */
static int finalize(struct qf_fs *fs, struct qf_var *var, double seconds)
{
	size_t ng = var->v->ng ? var->v->ng : 1;
	double *loss = calloc(ng, sizeof(double));
	double *rtn = calloc(ng, sizeof(double));
	double *alpha = calloc(ng, sizeof(double));
	double *score = calloc(2 * ng, sizeof(double));
	double *tokens = calloc(ng, sizeof(double));
	struct qf_cache_txn *txn = NULL;
	bool store_time = false;
	char hash[65];
	int l, ret;

	memcpy(hash, var->ci.hash, sizeof(hash));
	ret = loss && rtn && alpha && score && tokens ?
	      qf_cache_read_begin(fs->cache, &txn) : -ENOMEM;
	for (l = 0; l < var->job->nlayers && !ret; l++) {
		ret = read_record(txn, var, l, loss, rtn, alpha, score);
		if (!ret && var->job->nexp)
			ret = read_experts(txn, var, l, loss, rtn, tokens,
					   alpha);
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
		read_calib_hash(txn, var, hash);
		/* _head<h>: the head's losses, AWQ's alpha (job_layer.c
		 * commit_head) */
		if (var->v->head >= 0 &&
		    qf_cache_get(txn, var->vid, "__head__", &tk, &len) == 0 &&
		    (len == 2 * sizeof(double) || len == 3 * sizeof(double))) {
			memcpy(&loss[var->v->head], tk, sizeof(double));
			memcpy(&rtn[var->v->head], (const char *)tk +
			       sizeof(double), sizeof(double));
			if (len == 3 * sizeof(double))
				memcpy(&alpha[var->v->head], (const char *)tk +
				       2 * sizeof(double), sizeof(double));
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
		free(var->job->res_tokens);
		var->job->res_tokens = tokens;
		tokens = NULL;
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
	free(tokens);
	return ret;
}

/* -o max_jobs: wait for a slot (queued jobs show in status); false
 * when the mount is stopping. */
static bool job_queue(struct qf_fs *fs, struct qf_var *var)
{
	bool queued;

	qf_job_phase(var, "queued");
	pthread_mutex_lock(&fs->job_lock);
	while (fs->nrunning >= (fs->o.max_jobs > 0 ? fs->o.max_jobs : 1) &&
	       !fs->stopping)
		pthread_cond_wait(&fs->job_cond, &fs->job_lock);
	queued = !fs->stopping;
	if (queued)
		fs->nrunning++;
	pthread_mutex_unlock(&fs->job_lock);
	return queued;
}

/* The first layer not in the cache: the job starts (or resumes) there. */
static void job_first(struct job *j)
{
	struct qf_var *var = j->var;

	j->first = qf_job_layers_cached(j->fs, var);
	if (j->first > 0 && j->first < var->job->nlayers)
		qf_info("%s/%s: resuming at layer %d/%d", var->mdl->name,
			var->v->name, j->first + 1, var->job->nlayers);
	pthread_mutex_lock(&var->lock);
	var->job->first = j->first;
	var->job->layers_done = j->first > var->job->layers_done ? j->first :
							  var->job->layers_done;
	pthread_mutex_unlock(&var->lock);
}

/* The layers from j->first on, through the calibration driver. */
static int job_layers(struct job *j, struct qf_calib *cs)
{
	struct qf_var *var = j->var;
	struct qf_calib_ops ops = { .stats_seconds = &j->stats_s,
				    .mem_bytes = (int64_t)
						   j->fs->o.calib_mem,
				    .spill_dir = j->fs->cache_dir };
	int64_t spill;
	int ret;

	qf_job_layer_ops(&var->v->spec, &ops);
	qf_job_phase(var, "preparing the calibration set");
	ret = qf_tf_config_parse(var->mdl->m, &j->c);	/* samples it */
	if (!ret) {
		double t0 = qf_now();

		ret = qf_job_calib_set(j, cs);
		j->calib_s = qf_now() - t0;
	}
	if (!ret)	/* what is quantized: _rot's is rotated, untied */
		ret = qf_tf_config_parse(var->v->m, &j->c);
	if (!ret && var->v->spec.method == QF_METHOD_KQUANT &&
	    !(j->imat = calloc(qf_kq_imatrix_len(&j->c), sizeof(float))))
		ret = -ENOMEM;
	/* MoE kq: the pass that routes, each expert's stats from its tokens
	 * (the weights stay as they are, so sequential changes nothing) */
	if (!ret && j->c.moe && var->v->spec.method == QF_METHOD_KQUANT) {
		ops.sequential = true;
		ops.whole_layer = false;
	}
	spill = ret ? 0 : qf_calib_spill_bytes(&j->c, cs, &ops);
	if (spill && ops.block)
		qf_info("%s/%s: the layer input and its target (%.2f GB) in "
			"temporary files of the cache directory (calib_mem)",
			var->mdl->name, var->v->name, (double)spill / 1e9);
	if (!ret && !j->c.moe && !ops.block) {
		int cn = qf_calib_chunk_seqs(&j->c, cs->nseq, cs->seqlen,
					     ops.mem_bytes);

		if (cn < cs->nseq)
			qf_info("%s/%s: %d calibration sequences in chunks of "
				"%d (calib_mem)", var->mdl->name,
				var->v->name, cs->nseq, cn);
		if (spill)
			qf_info("%s/%s: the layer input (%.2f GB) in a "
				"temporary file of the cache directory "
				"(calib_mem)", var->mdl->name, var->v->name,
				(double)spill / 1e9);
		if (qf_calib_down_first(&j->c, &ops))
			qf_info("%s/%s: each layer's down_proj first, alone "
				"(calib_mem: the layer's weights and X^T X "
				"beside each other would take more than half)",
				var->mdl->name, var->v->name);
	}
	pthread_mutex_lock(&var->lock);
	var->job->phase = "quantizing layers";
	var->job->first_t = qf_now();
	pthread_mutex_unlock(&var->lock);
	if (!ret)
		ret = qf_calib_run(var->v->m, &j->c, cs, &ops, j);
	return ret;
}

/* Where a GPTQ job's time went. */
static void job_report(const struct job *j, double total)
{
	const struct qf_layer_res *r = &j->res;
	const struct qf_gptq_times *gt = &r->gt;

	qf_info("%s/%s: X^T X %.1f s, Cholesky %.1f s, column loop "
		"%.1f s, blocked updates %.1f s (%.1f GFLOP/s), rtn "
		"comparison %.1f s, packing %.1f s, LMDB %.1f s, "
		"forward passes, calibration set and the rest %.1f s",
		j->var->mdl->name, j->var->v->name, j->stats_s, gt->chol,
		gt->columns, gt->lazy,
		gt->lazy > 0 ? gt->lazy_flop / gt->lazy / 1e9 : 0,
		r->compare_s, r->pack_s, j->commit_s,
		total - j->stats_s - gt->chol - gt->columns -
		gt->lazy - r->compare_s - r->pack_s - j->commit_s);
}

/* Where an AWQ job's time went. */
static void job_report_awq(const struct job *j, double total)
{
	const struct qf_awq_times *t = &j->res.at;
	double awq = t->rtn_ref + t->search + t->clip + t->round +
		     t->reflip + t->final;

	qf_info("%s/%s: statistics (X^T X) %.1f s, RTN reference %.1f s, "
		"scale search %.1f s, clipping %.1f s, rounding and flips "
		"%.1f s, ReFlip %.1f s, output errors %.1f s, packing "
		"%.1f s, LMDB %.1f s, forward passes, calibration set and "
		"the rest %.1f s", j->var->mdl->name, j->var->v->name,
		j->stats_s, t->rtn_ref, t->search, t->clip, t->round,
		t->reflip, t->final, j->res.pack_s, j->commit_s,
		total - j->stats_s - awq - j->res.pack_s - j->commit_s);
}

/*
 * Where a k-quant job's time went: its calibration pass against
 * llama-imatrix's (bench/imatrix.py reads this line; the pass is all but
 * the GPTQ sweeps on the k-quant grids, which the job runs too).
 */
static void job_report_kq(const struct job *j, double total)
{
	double pass = total - j->kq_enc_s;

	qf_info("%s/%s: calibration pass %.3f s: calibration set %.3f s, "
		"X^T X and channel sums %.3f s, GPTQ factors and the head's "
		"Hessian %.3f s, LMDB %.3f s, layer loads, forward passes and "
		"the rest %.3f s; then GPTQ on the k-quant grids %.3f s",
		j->var->mdl->name, j->var->v->name, pass, j->calib_s,
		j->stats_s, j->kq_s, j->commit_s, pass - j->calib_s -
		j->stats_s - j->kq_s - j->commit_s, j->kq_enc_s);
}

static void job_free(struct job *j)
{
	qf_layer_res_free(&j->res, j->var->v->ng);
	free(j->imat);
	qf_job_kq_free(j);
	if (j->kq_plan)
		qf_gguf_plan_free(j->kq_plan);
	free(j->kq_plan);
	free(j->tokens);
	free(j);
}

/* The results: the final manifest, the record, the cache's bound. */
static int job_finish(struct job *j)
{
	struct qf_var *var = j->var;
	struct qf_fs *fs = j->fs;
	enum qf_method m = var->v->spec.method;
	double total;
	int ret;

	ret = finalize(fs, var, qf_now() - j->t0);
	if (ret < 0)
		return ret;
	qf_flight_record(fs, &var->fl);
	qf_cache_sync(fs->cache);
	qf_fs_trim_cache(fs);
	total = qf_now() - j->t0;
	qf_info("%s/%s: done in %.1f s", var->mdl->name, var->v->name, total);
	if (j->first < var->job->nlayers && m != QF_METHOD_AWQ &&
	    m != QF_METHOD_KQUANT && m != QF_METHOD_BRECQ)
		job_report(j, total);
	if (j->first < var->job->nlayers && m == QF_METHOD_AWQ)
		job_report_awq(j, total);
	if (j->first == 0 && m == QF_METHOD_KQUANT)
		job_report_kq(j, total);
	return 0;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct qf_var *var = j->var;
	struct qf_fs *fs = j->fs;
	struct qf_calib cs = { 0 };
	bool locked = false, queued;
	int ret;

	queued = job_queue(fs, var);
	ret = queued ? 0 : -EINTR;
	/* a fixed thread count: the same bytes on every run of a machine */
	qf_backend_set_threads((int)sysconf(_SC_NPROCESSORS_ONLN));
	j->t0 = qf_now();
	/* one job per variant on the machine: wait for another process's,
	 * then see what it left in the cache */
	qf_job_phase(var, "waiting for another process");
	if (!ret) {
		ret = qf_flight_lock(fs, &var->fl, QF_LOCK_JOB);
		locked = ret == 0;
		ret = ret == -EINTR ? -EINTR : 0;
	}
	/* and one in the fleet: from the bucket, or under its lease */
	if (!ret && qf_job_layers_cached(fs, var) < var->job->nlayers)
		ret = qf_cluster_job_begin(fs, var, qf_job_layers_cached,
					   &j->cl);
	j->t0 = qf_now();
	job_first(j);
	if (!ret && j->first < var->job->nlayers)
		ret = job_layers(j, &cs);
	qf_job_phase(var, "writing the results");
	pthread_mutex_lock(&var->lock);
	if (!ret)
		var->job->layers_done = var->job->nlayers;
	pthread_mutex_unlock(&var->lock);
	if (!ret)
		ret = job_finish(j);
	if (ret && ret != -EINTR)
		qf_err("%s/%s: production failed: %s", var->mdl->name,
		       var->v->name, qf_strerror(ret));
	qf_cluster_job_end(fs, j->cl, ret);
	if (locked)
		qf_flight_unlock(&var->fl, QF_LOCK_JOB);
	qf_calib_free(&cs);
	job_free(j);
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
	struct job *j = calloc(1, sizeof(*j));
	pthread_t th;
	int ret;

	if (!j)
		return -ENOMEM;
	j->fs = fs;
	j->var = var;
	ret = qf_layer_res_init(&j->res, var->v->ng);
	pthread_mutex_lock(&fs->job_lock);
	if (fs->stopping || ret < 0) {
		pthread_mutex_unlock(&fs->job_lock);
		job_free(j);
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
		job_free(j);
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
	char holder[128];

	pthread_mutex_lock(&b->lock);
	done = b->job->layers_done;
	n = b->job->nlayers;
	first = b->job->first;
	el = b->job->running ? now - b->job->t0 : 0;
	if (b->job->running && done > first)
		eta = (now - b->job->first_t) / (done - first) * (n - done);
	state = b->job->running ? b->job->phase : b->manifest_ready ? "done" :
		b->job->err ? "failed" : done == n ? "done" : "idle";
	memcpy(holder, b->job->remote_holder, sizeof(holder));
	if (holder[0] && b->job->running) {
		/* another machine's progress, from its lease */
		if (b->job->remote_done > done)
			done = b->job->remote_done;
		eta = b->job->remote_eta;
	}
	pthread_mutex_unlock(&b->lock);
	qf_buf_reset(out);
	qf_buf_addf(out, "{\"model\": \"%s\", \"variant\": \"%s\", "
		    "\"state\": \"%s\", \"layers_done\": %d, \"layers\": %d, "
		    "\"elapsed_s\": %.1f, ", var->mdl->name, var->v->name,
		    state, done, n, el);
	if (holder[0] && b->job->running)
		qf_buf_addf(out, "\"producer\": \"%s\", ", holder);
	qf_buf_adds(out, "\"eta_s\": ");
	if (holder[0] && eta >= 0)
		qf_buf_addf(out, "%.0f, \"layers_per_min\": null}", eta);
	else if (eta >= 0)
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
