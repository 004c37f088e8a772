/*
 * job_calib.c - what a calibrated variant's job starts from: the
 * calibration set's key, the map from the decoder's linears to the
 * variant's groups, and the set's token ids (sampled from the model or
 * read from a text file, then cached).
 *
 * The calibration set is keyed by what determines its tokens (the text
 * file's bytes and the tokenizer, or the sampler, seed and model); its
 * token ids are cached too, so a resumed job does not sample again.
 * Also the job state every job file reads: the phase and whether the
 * mount is stopping.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brecq.h"
#include "cluster.h"
#include "job_i.h"

#define CALIB_MAX (1u << 30)		/* calibration text bytes */

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

/* The group of source tensor name, -1: v's groups follow the model's
 * tensors, sorted by name. */
static int32_t find_group(const struct qf_variant *v, const char *name)
{
	size_t lo = 0, hi = v->ng, mid;
	int c;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		c = strcmp(v->g[mid].w->name, name);
		if (!c)
			return (int32_t)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/*
 * MoE: which group each expert's linear is (by the family's checkpoint
 * names, which the variant keeps), jb->exp_group.
 */
static int expert_groups(struct qf_var *var, const struct qf_tf_config *c)
{
	struct qf_job *jb = var->job;
	int nexp = c->experts + (c->shared_inter > 0);	/* + the shared */
	size_t n = (size_t)c->layers * (size_t)nexp * QF_MOE_NLINEAR;
	char want[256];
	size_t i;
	int l, e, k;

	jb->nexp = nexp;
	jb->exp_group = malloc(n * sizeof(*jb->exp_group));
	if (!jb->exp_group)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		l = (int)(i / ((size_t)nexp * QF_MOE_NLINEAR));
		e = (int)(i / QF_MOE_NLINEAR % (size_t)nexp);
		k = (int)(i % QF_MOE_NLINEAR);
		jb->exp_group[i] = -1;
		if (!qf_moe_layer_sparse(c, l))
			continue;
		qf_moe_expert_name(c, l, e, k, want, sizeof(want) - 8);
		strcat(want, ".weight");
		jb->exp_group[i] = find_group(var->v, want);
	}
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
	if (c.moe && v->spec.method != QF_METHOD_GPTQ &&
	    v->spec.method != QF_METHOD_AWQ &&
	    v->spec.method != QF_METHOD_BRECQ &&
	    v->spec.method != QF_METHOD_KQUANT &&
	    v->spec.method != QF_METHOD_MIXED_DYN &&
	    v->spec.method != QF_METHOD_MIXED_BUDGET &&
	    v->spec.method != QF_METHOD_RTN) {
		/* experts: GPTQ (mixed_dyn and mixed_b too), AWQ, BRECQ,
		 * kq's imatrix and mixed precision's probe (RTN:
		 * job_mixed.c) only so far (ns.c lists no other) */
		qf_err("%s: %s: only GPTQ, AWQ, BRECQ and the k-quants "
		       "calibrate a mixture-of-experts model's experts so far",
		       var->mdl->name, v->name);
		return QF_EUNSUPPORTED;
	}
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
	ret = c.moe ? expert_groups(var, &c) : 0;
	if (ret < 0)
		return ret;
	for (i = 0; i < v->ng; i++) {
		const char *n = v->g[i].w->name;
		int l = layer_of(n);

		if ((int)i == v->head) {	/* with the last layer */
			jb->group_layer[i] = c.layers - 1;
			continue;
		}
		jb->group_layer[i] = l;
		if (l < 0 || l >= c.layers) {
			qf_err("%s: %s is outside the decoder layers",
			       var->mdl->name, n);
			return QF_EUNSUPPORTED;
		}
		for (k = 0; k < QF_TF_NLINEAR; k++) {
			char want[256];
			int64_t r0, rows;

			/* a fused tensor: at its first linear only (layer.h) */
			snprintf(want, sizeof(want), "model.layers.%d.%s.weight",
				 l, qf_tf_linear_tensor(&c, k, &r0, &rows));
			if (!strcmp(want, n) && r0 == 0)
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
	free(jb->exp_group);
	free(jb->res_tokens);
	free(jb);
	var->job = NULL;
}

/* ------------------------------------------------------------------ */
/* job state                                                           */

void qf_job_phase(struct qf_var *var, const char *phase)
{
	pthread_mutex_lock(&var->lock);
	var->job->phase = phase;
	pthread_mutex_unlock(&var->lock);
}

/* ------------------------------------------------------------------ */
/* the calibration set                                                 */

/* The set's token ids from the cache into cs: true when there. */
static bool load_ids(struct qf_fs *fs, struct qf_var *var,
		     struct qf_calib *cs)
{
	size_t len, n = (size_t)var->ci.nseq * var->ci.seqlen;
	struct qf_cache_txn *txn;
	const void *p;

	if (qf_cache_read_begin(fs->cache, &txn) == 0) {
		if (qf_cache_get(txn, var->calib_vid, "__ids__", &p, &len) == 0
		    && len == n * sizeof(int32_t) && (cs->ids = malloc(len)))
			memcpy(cs->ids, p, len);
		qf_cache_read_end(txn);
	}
	if (!cs->ids)
		return false;
	cs->nseq = var->ci.nseq;
	cs->seqlen = var->ci.seqlen;
	qf_calib_hash(cs);
	return true;
}

int qf_job_calib_set(struct job *j, struct qf_calib *cs)
{
	struct qf_var *var = j->var;
	struct qf_fs *fs = j->fs;
	struct qf_cache_item it;
	struct qf_buf text = QF_BUF_INIT;
	struct qf_tok *tok = NULL;
	const char *why = NULL;
	size_t n = (size_t)var->ci.nseq * var->ci.seqlen;
	int32_t bos;
	int ret;

	memset(cs, 0, sizeof(*cs));
	/* this machine's, else the cluster's (the first machine's) */
	if (load_ids(fs, var, cs) ||
	    (qf_cluster_calib_fetch(fs, var) == 0 && load_ids(fs, var, cs)))
		return 0;
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
			       "%d x %d tokens", var->mdl->name, var->job->calib_path,
			       var->ci.nseq, var->ci.seqlen - 1);
			ret = QF_EFORMAT;
		}
	} else {
		qf_job_phase(var, "sampling the calibration set");
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
	if (!ret && qf_cluster_calib_publish(fs, var, cs->ids,
					     n * sizeof(int32_t)) == 1) {
		qf_calib_free(cs);
		if (!load_ids(fs, var, cs))
			ret = -ENOENT;
	}
out_free:
	qf_tok_close(tok);
	qf_buf_release(&text);
	if (ret < 0)
		qf_calib_free(cs);
	return ret;
}
