/*
 * config.c - a Llama-family config.json (llama, mistral, qwen2, qwen3)
 * as struct qf_tf_config, and the names and shapes of a decoder layer's
 * seven linears under it.  Read by the forward pass (nn/), the GGUF
 * writer (gguf/) and everything that walks a model's linears.
 *
 * config.json is untrusted: every dimension is range-checked and
 * unsupported model types or rope scalings fail with QF_EUNSUPPORTED.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

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
	if (!strcmp(ty->valuestring, "linear")) {	/* positions / factor */
		c->rope_linear = (float)cfg_num(rs, "factor", 0);
		if (c->rope_linear >= 1)
			return 0;
		qf_err("%s: bad linear rope_scaling factor", m->dir);
		return QF_EFORMAT;
	}
	if ((c->arch->flags & QF_ARCH_LONGROPE) &&
	    (!strcmp(ty->valuestring, "longrope") ||
	     !strcmp(ty->valuestring, "su")))
		return 0;	/* the family's parse hook reads it */
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
	c->arch = qf_arch_find(mt->valuestring);
	if (!c->arch) {
		char names[256];

		qf_arch_names(names, sizeof(names));
		qf_err("%s: model_type '%s' is not supported (only shape-only "
		       "RTN variants; computed: %s)", m->dir, mt->valuestring,
		       names);
		return QF_EUNSUPPORTED;
	}
	strcpy(c->model_type, c->arch->model_type);
	if (!act)	/* gemma's key */
		act = cJSON_GetObjectItemCaseSensitive(o, "hidden_activation");
	c->act = QF_ACT_SILU;
	if (act && cJSON_IsString(act) &&
	    (!strcmp(act->valuestring, "gelu_pytorch_tanh") ||
	     !strcmp(act->valuestring, "gelu_tanh")))
		c->act = QF_ACT_GELU_TANH;
	else if (act && !(cJSON_IsString(act) &&
			  !strcmp(act->valuestring, "silu"))) {
		qf_err("%s: hidden_act other than silu or gelu_pytorch_tanh",
		       m->dir);
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
	/* a variant's quantized head (_head<h>) has lm_head.qweight */
	c->tie = cfg_bool(o, "tie_word_embeddings", false) ||
		 (!qf_model_find(m, "lm_head.weight") &&
		  !qf_model_find(m, "lm_head.qweight"));
	c->qk_norm = c->arch->flags & QF_ARCH_QK_NORM;
	c->attn_bias = (c->arch->flags & QF_ARCH_QKV_BIAS) ||
		       cfg_bool(o, "attention_bias", false);
	c->sliding_window = 0;
	if (c->arch->flags & QF_ARCH_SLIDING) {
		long w = qf_model_cfg_int(m, "sliding_window", 0);

		c->sliding_window = w > 0 && w < (1L << 30) ? (int)w : 0;
	}
	return c->arch->parse ? c->arch->parse(m, (const struct cJSON *)o, c) :
				0;
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

const char *qf_tf_linear_tensor(const struct qf_tf_config *c,
				enum qf_tf_linear l, int64_t *row0,
				int64_t *rows)
{
	const char *const *lin = c->arch && c->arch->lin[0] ? c->arch->lin :
				 linear_names;
	int k;

	*row0 = 0;
	*rows = 0;
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		if (strcmp(lin[k], lin[l]))
			continue;
		if (k < (int)l)
			*row0 += qf_tf_linear_out(c, k);
		*rows += qf_tf_linear_out(c, k);
	}
	return lin[l];
}

int qf_tf_rot_dim(const struct qf_tf_config *c)
{
	return c->rot_dim > 0 ? c->rot_dim : c->head_dim;
}

/* Which linears carry a bias, as the transformers modules build them. */
bool qf_tf_linear_bias(const struct qf_model *m, const struct qf_tf_config *c,
		       enum qf_tf_linear i)
{
	if (i <= QF_TF_V)
		return c->attn_bias;
	if (i == QF_TF_O)	/* qwen2's, qwen2_moe's o_proj: none */
		return c->attn_bias && strncmp(c->model_type, "qwen2", 5);
	return !strcmp(c->model_type, "llama") &&
	       cfg_bool(m->config, "mlp_bias", false);
}
