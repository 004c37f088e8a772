/*
 * forward.c - the Llama-family forward pass around the kernels of
 * tf_kernels.c: config.json parsing, loading one decoder layer's weights
 * as fp32, the embedding lookup, the head (final norm + lm_head) and
 * whole-model logits, one layer in memory at a time.
 *
 * Model files are untrusted: every tensor's presence and shape is checked
 * (QF_EFORMAT, naming the tensor) before it is read.  The embedding table
 * and lm_head are converted in slices, never as a whole fp32 copy, so a
 * 150k-token vocabulary costs no extra gigabyte.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "tf_kernels.h"

/* Floats of lm_head converted at a time. */
#define HEAD_CHUNK_FLOATS (4u << 20)

static const char *const linear_names[QF_TF_NLINEAR] = {
	[QF_TF_Q] = "self_attn.q_proj",
	[QF_TF_K] = "self_attn.k_proj",
	[QF_TF_V] = "self_attn.v_proj",
	[QF_TF_O] = "self_attn.o_proj",
	[QF_TF_GATE] = "mlp.gate_proj",
	[QF_TF_UP] = "mlp.up_proj",
	[QF_TF_DOWN] = "mlp.down_proj",
};

const char *qf_tf_linear_name(enum qf_tf_linear l)
{
	if ((unsigned)l >= QF_TF_NLINEAR)
		return NULL;
	return linear_names[l];
}

/* ------------------------------------------------------------------ */
/* config.json                                                        */

static bool cfg_bool(const cJSON *o, const char *key, bool def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsBool(it) ? cJSON_IsTrue(it) : def;
}

static double cfg_num(const cJSON *o, const char *key, double def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(it) ? it->valuedouble : def;
}

/* A positive integer no larger than max, or -1. */
static int cfg_pos(const cJSON *o, const char *key, long max)
{
	double d = cfg_num(o, key, -1);

	if (d != floor(d) || d <= 0 || d > (double)max)
		return -1;
	return (int)d;
}

static int parse_rope_scaling(const struct qf_model *m, const cJSON *rs,
			      struct qf_tf_config *c)
{
	const cJSON *ty;

	if (!rs || cJSON_IsNull(rs))
		return 0;
	if (!cJSON_IsObject(rs)) {
		qf_err("%s: rope_scaling is not an object", m->dir);
		return QF_EFORMAT;
	}
	ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
	if (!cJSON_IsString(ty))
		ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
	if (!cJSON_IsString(ty)) {
		qf_err("%s: rope_scaling without a rope_type", m->dir);
		return QF_EFORMAT;
	}
	if (!strcmp(ty->valuestring, "default"))
		return 0;
	if (strcmp(ty->valuestring, "llama3")) {
		qf_err("%s: rope_scaling type '%s' is not supported", m->dir,
		       ty->valuestring);
		return QF_EUNSUPPORTED;
	}
	c->rope_factor = (float)cfg_num(rs, "factor", 0);
	c->rope_low_freq_factor = (float)cfg_num(rs, "low_freq_factor", 0);
	c->rope_high_freq_factor = (float)cfg_num(rs, "high_freq_factor", 0);
	c->rope_orig_max_pos = cfg_pos(rs, "original_max_position_embeddings",
				       1L << 30);
	if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
	    !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
	    c->rope_orig_max_pos <= 0) {
		qf_err("%s: bad llama3 rope_scaling parameters", m->dir);
		return QF_EFORMAT;
	}
	return 0;
}

static int parse_dims(const struct qf_model *m, const cJSON *o,
		      struct qf_tf_config *c)
{
	const cJSON *hd = cJSON_GetObjectItemCaseSensitive(o, "head_dim");
	const long lim = 1L << 24;

	c->hidden = cfg_pos(o, "hidden_size", lim);
	c->inter = cfg_pos(o, "intermediate_size", lim);
	c->layers = cfg_pos(o, "num_hidden_layers", 1 << 16);
	c->heads = cfg_pos(o, "num_attention_heads", 1 << 16);
	c->kv_heads = cJSON_GetObjectItemCaseSensitive(o, "num_key_value_heads") ?
		      cfg_pos(o, "num_key_value_heads", 1 << 16) : c->heads;
	c->vocab = cfg_pos(o, "vocab_size", 1L << 28);
	if (c->hidden < 0 || c->inter < 0 || c->layers < 0 || c->heads < 0 ||
	    c->kv_heads < 0 || c->vocab < 0 || c->heads % c->kv_heads) {
		qf_err("%s: config.json lacks or has bad model dimensions",
		       m->dir);
		return QF_EFORMAT;
	}
	if (hd && !cJSON_IsNull(hd))
		c->head_dim = cfg_pos(o, "head_dim", 1 << 16);
	else
		c->head_dim = c->hidden % c->heads ? -1 : c->hidden / c->heads;
	if (c->head_dim <= 0 || c->head_dim % 2) {
		qf_err("%s: bad head_dim", m->dir);
		return QF_EFORMAT;
	}
	return 0;
}

int qf_tf_config_parse(const struct qf_model *m, struct qf_tf_config *c)
{
	const cJSON *o = m->config;
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
	const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
	const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
	int ret;

	memset(c, 0, sizeof(*c));
	if (!cJSON_IsString(mt)) {
		qf_err("%s: config.json has no model_type", m->dir);
		return QF_EUNSUPPORTED;
	}
	if (strcmp(mt->valuestring, "llama") &&
	    strcmp(mt->valuestring, "mistral") &&
	    strcmp(mt->valuestring, "qwen2") &&
	    strcmp(mt->valuestring, "qwen3")) {
		qf_err("%s: model_type '%s' is not supported", m->dir,
		       mt->valuestring);
		return QF_EUNSUPPORTED;
	}
	strcpy(c->model_type, mt->valuestring);
	if (act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu"))) {
		qf_err("%s: hidden_act other than silu", m->dir);
		return QF_EUNSUPPORTED;
	}
	ret = parse_dims(m, o, c);
	if (ret < 0)
		return ret;
	c->rms_eps = (float)cfg_num(o, "rms_norm_eps", 1e-6);
	/* transformers 5 moved rope_theta into rope_parameters */
	c->rope_theta = (float)cfg_num(o, "rope_theta",
				       cfg_num(rp, "rope_theta", 10000.0));
	if (!(c->rms_eps >= 0) || !(c->rope_theta > 0)) {
		qf_err("%s: bad rms_norm_eps or rope_theta", m->dir);
		return QF_EFORMAT;
	}
	ret = parse_rope_scaling(m, cJSON_GetObjectItemCaseSensitive(o,
				 "rope_scaling"), c);
	if (ret < 0)
		return ret;
	c->tie = cfg_bool(o, "tie_word_embeddings", false) ||
		 !qf_model_find(m, "lm_head.weight");
	c->qk_norm = !strcmp(c->model_type, "qwen3");
	c->attn_bias = !strcmp(c->model_type, "qwen2") ||
		       cfg_bool(o, "attention_bias", false);
	c->sliding_window = 0;
	if (!strcmp(c->model_type, "mistral")) {
		long w = qf_model_cfg_int(m, "sliding_window", 0);

		c->sliding_window = w > 0 && w < (1L << 30) ? (int)w : 0;
	}
	return 0;
}

/* Mistral's sliding window when it is shorter than seqlen, else 0. */
static int sliding_window(const struct qf_tf_config *c, int seqlen)
{
	int w = c->sliding_window;

	return w > 0 && w < seqlen ? w : 0;
}

/* ------------------------------------------------------------------ */
/* layers                                                             */

/* Tensor name with its shape checked: [d0] when d1 == 0, else [d0, d1]. */
static const struct qf_model_tensor *find_shaped(const struct qf_model *m,
						 const char *name, int64_t d0,
						 int64_t d1)
{
	const struct qf_model_tensor *mt = qf_model_find(m, name);
	int nd = d1 ? 2 : 1;

	if (!mt) {
		qf_err("%s: missing tensor '%s'", m->dir, name);
		return NULL;
	}
	if (mt->t->ndim != nd || mt->t->shape[0] != d0 ||
	    (nd == 2 && mt->t->shape[1] != d1)) {
		qf_err("%s: tensor '%s' has a wrong shape (want [%lld%s%lld])",
		       m->dir, name, (long long)d0, nd == 2 ? ", " : "",
		       nd == 2 ? (long long)d1 : 0LL);
		return NULL;
	}
	return mt;
}

/* Read name ([d0] or [d0, d1]) into a new fp32 array. */
static int load_f32(const struct qf_model *m, const char *name, int64_t d0,
		    int64_t d1, float **out)
{
	const struct qf_model_tensor *mt = find_shaped(m, name, d0, d1);
	float *p;
	int ret;

	if (!mt)
		return QF_EFORMAT;
	p = malloc(sizeof(float) * (size_t)(d0 * (d1 ? d1 : 1)));
	if (!p)
		return -ENOMEM;
	ret = qf_model_read_f32(mt, p);
	if (ret < 0) {
		free(p);
		return ret;
	}
	*out = p;
	return 0;
}

static int load_layer_t(const struct qf_model *m, int l, const char *what,
			int64_t d0, int64_t d1, float **out)
{
	char name[256];

	snprintf(name, sizeof(name), "model.layers.%d.%s", l, what);
	return load_f32(m, name, d0, d1, out);
}

/* Which linears carry a bias, as the transformers modules build them. */
static bool has_bias(const struct qf_model *m, const struct qf_tf_config *c,
		     enum qf_tf_linear i)
{
	if (i <= QF_TF_V)
		return c->attn_bias;
	if (i == QF_TF_O)	/* qwen2's o_proj never has one */
		return c->attn_bias && strcmp(c->model_type, "qwen2");
	return !strcmp(c->model_type, "llama") &&
	       cfg_bool(m->config, "mlp_bias", false);
}

int qf_tf_layer_load(const struct qf_model *m, const struct qf_tf_config *c,
		     int l, struct qf_tf_layer *out)
{
	char what[64];
	int i, ret;

	memset(out, 0, sizeof(*out));
	if (l < 0 || l >= c->layers)
		return -EINVAL;
	for (i = 0; i < QF_TF_NLINEAR; i++) {
		int64_t o = qf_tf_linear_out(c, i), n = qf_tf_linear_in(c, i);

		/* .weight, or the GPTQ tensors of a mounted variant */
		snprintf(what, sizeof(what), "model.layers.%d.%s", l,
			 linear_names[i]);
		out->w[i] = malloc(sizeof(float) * (size_t)(o * n));
		ret = out->w[i] ? qf_model_linear_f32(m, what, o, n,
						      out->w[i]) : -ENOMEM;
		if (ret < 0)
			goto out_free;
		if (!has_bias(m, c, i))
			continue;
		snprintf(what, sizeof(what), "%s.bias", linear_names[i]);
		ret = load_layer_t(m, l, what, o, 0, &out->b[i]);
		if (ret < 0)
			goto out_free;
	}
	ret = load_layer_t(m, l, "input_layernorm.weight", c->hidden, 0,
			   &out->in_norm);
	if (ret == 0)
		ret = load_layer_t(m, l, "post_attention_layernorm.weight",
				   c->hidden, 0, &out->post_norm);
	if (ret == 0 && c->qk_norm)
		ret = load_layer_t(m, l, "self_attn.q_norm.weight",
				   c->head_dim, 0, &out->q_norm);
	if (ret == 0 && c->qk_norm)
		ret = load_layer_t(m, l, "self_attn.k_norm.weight",
				   c->head_dim, 0, &out->k_norm);
	if (ret == 0)
		return 0;
out_free:
	qf_tf_layer_free(out);
	return ret;
}

void qf_tf_layer_free(struct qf_tf_layer *ly)
{
	int i;

	if (!ly)
		return;
	for (i = 0; i < QF_TF_NLINEAR; i++) {
		free(ly->w[i]);
		free(ly->b[i]);
	}
	free(ly->in_norm);
	free(ly->post_norm);
	free(ly->q_norm);
	free(ly->k_norm);
	memset(ly, 0, sizeof(*ly));
}

/* ------------------------------------------------------------------ */
/* embeddings and head                                                */

/*
 * Rows [r0, r0 + n) of a [rows, cols] source matrix as fp32 into dst.
 * The caller checked the shard is unchanged.
 */
static int read_rows(const struct qf_model_tensor *mt, int64_t r0, int64_t n,
		     int64_t cols, float *dst)
{
	size_t es = qf_dtype_size(mt->t->dtype);
	const uint8_t *src = qf_st_data(mt->shard, mt->t);
	int64_t i;
	int ret;

	ret = qf_to_f32(mt->t->dtype, src + (size_t)(r0 * cols) * es,
			(size_t)(n * cols), dst);
	if (ret < 0) {
		qf_err("%s: tensor '%s' is not floating point",
		       mt->shard->path, mt->name);
		return ret;
	}
	if (qf_st_faulted(mt->shard))
		return QF_ECORRUPT;
	for (i = 0; i < n * cols; i++)
		if (!isfinite(dst[i])) {
			qf_err("%s: tensor '%s' has a non-finite value in row "
			       "%lld", mt->shard->path, mt->name,
			       (long long)(r0 + i / cols));
			return QF_ENUMERIC;
		}
	return 0;
}

static int check_unchanged(const struct qf_model_tensor *mt)
{
	if (qf_st_unchanged(mt->shard))
		return 0;
	qf_err("%s: changed on disk since the mount; remount",
	       mt->shard->path);
	return QF_ECORRUPT;
}

int qf_tf_embed(const struct qf_model *m, const struct qf_tf_config *c,
		const int32_t *ids, int64_t n, float *x)
{
	const struct qf_model_tensor *mt;
	int64_t i;
	int ret;

	mt = find_shaped(m, "model.embed_tokens.weight", c->vocab, c->hidden);
	if (!mt)
		return QF_EFORMAT;
	ret = check_unchanged(mt);
	for (i = 0; i < n && ret == 0; i++) {
		if (ids[i] < 0 || ids[i] >= c->vocab) {
			qf_err("token id %d out of range (vocab %d)", ids[i],
			       c->vocab);
			return -EINVAL;
		}
		ret = read_rows(mt, ids[i], 1, c->hidden, x + i * c->hidden);
	}
	return ret;
}

int qf_tf_head(const struct qf_model *m, const struct qf_tf_config *c,
	       const float *x, int64_t n, float *logits)
{
	const char *wname = c->tie ? "model.embed_tokens.weight" :
				     "lm_head.weight";
	const struct qf_model_tensor *mt;
	float *xn = NULL;	/* [n, hidden] normed */
	float *w = NULL;	/* [chunk, hidden] slice of lm_head */
	float *norm = NULL;	/* [hidden] */
	int64_t chunk, r0, nr;
	int ret;

	mt = find_shaped(m, wname, c->vocab, c->hidden);
	if (!mt)
		return QF_EFORMAT;
	ret = load_f32(m, "model.norm.weight", c->hidden, 0, &norm);
	if (ret < 0)
		return ret;
	chunk = HEAD_CHUNK_FLOATS / c->hidden;
	chunk = chunk < 1 ? 1 : chunk > c->vocab ? c->vocab : chunk;
	xn = malloc(sizeof(float) * (size_t)(n * c->hidden));
	w = malloc(sizeof(float) * (size_t)(chunk * c->hidden));
	if (!xn || !w) {
		ret = -ENOMEM;
		goto out_free;
	}
	qf_tf_rmsnorm(x, norm, n, c->hidden, c->rms_eps, xn);
	ret = check_unchanged(mt);
	for (r0 = 0; r0 < c->vocab && ret == 0; r0 += chunk) {
		nr = c->vocab - r0 < chunk ? c->vocab - r0 : chunk;
		ret = read_rows(mt, r0, nr, c->hidden, w);
		if (ret < 0)
			break;
		/* logits[:, r0:r0+nr] = xn w^T, ldc = vocab */
		qf_sgemm(false, true, (int)n,
			    (int)nr, c->hidden, 1.0f, xn, c->hidden, w,
			    c->hidden, 0.0f, logits + r0, c->vocab);
	}
out_free:
	free(xn);
	free(w);
	free(norm);
	return ret;
}

int qf_tf_logits(const struct qf_model *m, const struct qf_tf_config *c,
		 const int32_t *ids, int nseq, int seqlen, float *logits)
{
	int64_t n = (int64_t)nseq * seqlen;
	int window = sliding_window(c, seqlen);
	struct qf_tf_layer ly;
	float *x;	/* [n, hidden] residual stream */
	int l, ret;

	if (nseq <= 0 || seqlen <= 0)
		return -EINVAL;
	x = malloc(sizeof(float) * (size_t)(n * c->hidden));
	if (!x)
		return -ENOMEM;
	ret = qf_tf_embed(m, c, ids, n, x);
	for (l = 0; l < c->layers && ret == 0; l++) {
		ret = qf_tf_layer_load(m, c, l, &ly);
		if (ret < 0)
			break;
		ret = qf_tf_layer_forward_win(c, &ly, l, x, nseq, seqlen,
					      window, NULL, NULL);
		qf_tf_layer_free(&ly);
	}
	if (ret == 0)
		ret = qf_tf_head(m, c, x, n, logits);
	free(x);
	return ret;
}

int64_t qf_tf_linear_out(const struct qf_tf_config *c, enum qf_tf_linear l)
{
	switch (l) {
	case QF_TF_Q:
		return (int64_t)c->heads * c->head_dim;
	case QF_TF_K:
	case QF_TF_V:
		return (int64_t)c->kv_heads * c->head_dim;
	case QF_TF_GATE:
	case QF_TF_UP:
		return c->inter;
	default:
		return c->hidden;
	}
}

int64_t qf_tf_linear_in(const struct qf_tf_config *c, enum qf_tf_linear l)
{
	if (l == QF_TF_O)
		return (int64_t)c->heads * c->head_dim;
	if (l == QF_TF_DOWN)
		return c->inter;
	return c->hidden;
}
