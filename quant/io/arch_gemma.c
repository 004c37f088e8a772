/*
 * arch_gemma.c - Gemma 2 and Gemma 3 (text) in the architecture table:
 * their config.json keys and what `quantfs mkmodel --arch` writes.
 *
 * What a Gemma decoder computes differently from Llama, all recorded in
 * struct qf_tf_config for the kernels (quant/nn) to test: RMSNorms that
 * scale by (1 + w) (checkpoints store w near 0), norms on the attention
 * and MLP outputs before the residual adds, the embedding times
 * sqrt(hidden), queries scaled by query_pre_attn_scalar^-0.5, soft-capped
 * attention scores and logits (Gemma 2), and layers alternating between
 * a sliding window and global attention.  Gemma 3 gives its sliding
 * layers their own rope base (rope_local_base_freq) while its global
 * layers keep rope_theta with the linear rope_scaling, and has per-head
 * q/k norms.
 *
 * Which layers slide: an explicit "layer_types" list when config.json has
 * one (transformers >= 4.53 writes it), else the family's rule: Gemma 2
 * slides on even layers, Gemma 3 on all but every sliding_window_pattern-th
 * (6).  llama.cpp hard-codes the same two patterns.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

#include "arch_i.h"

/* ------------------------------------------------------------------ */
/* config.json                                                        */

/* A number, def when absent or null, NAN when another JSON type. */
static double num_or(const cJSON *o, const char *key, double def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!it || cJSON_IsNull(it))
		return def;
	return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

static void slide_set(struct qf_tf_config *c, int l)
{
	c->slides[l / 64] |= 1ull << (l % 64);
}

/* "layer_types" into c->slides; 1 when absent, 0, or QF_EFORMAT. */
static int parse_layer_types(const struct qf_model *m, const cJSON *o,
			     struct qf_tf_config *c)
{
	const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
	const cJSON *it;
	int l = 0;

	if (!lt || cJSON_IsNull(lt))
		return 1;
	if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->layers)
		goto bad;
	cJSON_ArrayForEach(it, lt) {
		if (!cJSON_IsString(it))
			goto bad;
		if (!strcmp(it->valuestring, "sliding_attention"))
			slide_set(c, l);
		else if (strcmp(it->valuestring, "full_attention"))
			goto bad;
		l++;
	}
	return 0;
bad:
	qf_err("%s: layer_types is not a list of %d \"sliding_attention\" or "
	       "\"full_attention\"", m->dir, c->layers);
	return QF_EFORMAT;
}

/*
 * The keys both generations share; pattern: a layer l slides unless
 * (l + 1) % pattern == 0 when config.json lists no layer_types.
 */
static int parse_common(const struct qf_model *m, const cJSON *o,
			struct qf_tf_config *c, int pattern)
{
	double qs = num_or(o, "query_pre_attn_scalar", c->head_dim);
	double acap = num_or(o, "attn_logit_softcapping", 0);
	double fcap = num_or(o, "final_logit_softcapping", 0);
	double win = num_or(o, "sliding_window", 4096);
	const cJSON *bi = cJSON_GetObjectItemCaseSensitive(o,
				"use_bidirectional_attention");
	int l, ret;

	if (!(qs > 0) || !(acap >= 0) || !(fcap >= 0) || !(win >= 0) ||
	    win != floor(win) || win >= (double)(1L << 30)) {
		qf_err("%s: bad query_pre_attn_scalar, soft-capping or "
		       "sliding_window", m->dir);
		return QF_EFORMAT;
	}
	if (cJSON_IsTrue(bi)) {
		qf_err("%s: bidirectional Gemma (embedding models) is not "
		       "supported", m->dir);
		return QF_EUNSUPPORTED;
	}
	c->norm_plus1 = true;
	c->sandwich = true;
	c->embed_scale = sqrtf((float)c->hidden);
	c->attn_scale = (float)(1.0 / sqrt(qs));
	c->attn_softcap = (float)acap;
	c->final_softcap = (float)fcap;
	c->sliding_window = (int)win;
	c->window_per_layer = true;
	if (!c->sliding_window)
		return 0;
	if (c->layers > QF_TF_MAX_SLIDE_LAYERS) {
		qf_err("%s: more than %d layers with sliding windows", m->dir,
		       QF_TF_MAX_SLIDE_LAYERS);
		return QF_EUNSUPPORTED;
	}
	ret = parse_layer_types(m, o, c);
	if (ret <= 0)
		return ret;
	for (l = 0; l < c->layers; l++)
		if ((l + 1) % pattern)
			slide_set(c, l);
	return 0;
}

int qf_gemma2_parse(const struct qf_model *m, const struct cJSON *o,
		    struct qf_tf_config *c)
{
	return parse_common(m, o, c, 2);
}

/*
 * transformers 5 writes Gemma 3's rope per layer type: rope_parameters
 * {"full_attention": {rope_theta, rope_type, factor}, "sliding_attention":
 * {rope_theta, ...}}.  Into c (over what the 4.x keys gave); 0 or
 * QF_EFORMAT / QF_EUNSUPPORTED.
 */
static int parse_rope_by_type(const struct qf_model *m, const cJSON *o,
			      struct qf_tf_config *c)
{
	const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o,
							   "rope_parameters");
	const cJSON *full = cJSON_GetObjectItemCaseSensitive(rp,
							     "full_attention");
	const cJSON *sl = cJSON_GetObjectItemCaseSensitive(rp,
							   "sliding_attention");
	const cJSON *ty = cJSON_GetObjectItemCaseSensitive(full, "rope_type");
	const cJSON *sty = cJSON_GetObjectItemCaseSensitive(sl, "rope_type");

	if (!cJSON_IsObject(full) || !cJSON_IsObject(sl))
		return 0;
	c->rope_theta = (float)num_or(full, "rope_theta", c->rope_theta);
	c->rope_local_theta = (float)num_or(sl, "rope_theta",
					    c->rope_local_theta);
	c->rope_linear = 0;
	if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "linear"))
		c->rope_linear = (float)num_or(full, "factor", NAN);
	else if (cJSON_IsString(ty) && strcmp(ty->valuestring, "default"))
		goto unsupported;
	if (cJSON_IsString(sty) && strcmp(sty->valuestring, "default"))
		goto unsupported;
	if (!(c->rope_theta > 0) || !(c->rope_local_theta > 0) ||
	    !(c->rope_linear == 0 || c->rope_linear >= 1)) {
		qf_err("%s: bad rope_parameters", m->dir);
		return QF_EFORMAT;
	}
	return 0;
unsupported:
	qf_err("%s: rope_parameters of a type other than default or linear",
	       m->dir);
	return QF_EUNSUPPORTED;
}

int qf_gemma3_parse(const struct qf_model *m, const struct cJSON *o,
		    struct qf_tf_config *c)
{
	double pat = num_or(o, "sliding_window_pattern", 6);
	double local = num_or(o, "rope_local_base_freq", 10000);
	int ret;

	if (!(pat >= 1) || pat != floor(pat) || pat > 1 << 16 ||
	    !(local > 0)) {
		qf_err("%s: bad sliding_window_pattern or rope_local_base_freq",
		       m->dir);
		return QF_EFORMAT;
	}
	c->rope_local_theta = (float)local;
	ret = parse_rope_by_type(m, o, c);
	return ret ? ret : parse_common(m, o, c, (int)pat);
}

bool qf_tf_layer_slides(const struct qf_tf_config *c, int l)
{
	if (c->sliding_window <= 0)
		return false;
	if (!c->window_per_layer)
		return true;
	return l >= 0 && l < QF_TF_MAX_SLIDE_LAYERS &&
	       (c->slides[l / 64] >> (l % 64) & 1);
}

void qf_tf_config_layer(const struct qf_tf_config *c, int l,
			struct qf_tf_config *lc)
{
	*lc = *c;
	if (!c->window_per_layer)
		return;
	if (!qf_tf_layer_slides(c, l)) {
		lc->sliding_window = 0;
		return;
	}
	if (c->rope_local_theta > 0) {	/* plain rope at the local base */
		lc->rope_theta = c->rope_local_theta;
		lc->rope_linear = 0;
		lc->rope_factor = 0;
	}
}

/* ------------------------------------------------------------------ */
/* mkmodel --arch gemma2 | gemma3_text                                */

static void set_num(cJSON *c, const char *key, double v)
{
	cJSON_DeleteItemFromObjectCaseSensitive(c, key);
	cJSON_AddNumberToObject(c, key, v);
}

static int mk_head_dim(const struct qf_mkmodel_opts *o)
{
	return o->head_dim > 0 ? o->head_dim : o->hidden / o->heads;
}

/* Windows as the released models have them, 16 tokens for tiny ones. */
static int mk_window(const struct qf_mkmodel_opts *o, int real)
{
	return o->hidden >= 1024 ? real : 16;
}

static void mk_common(cJSON *c, const struct qf_mkmodel_opts *o)
{
	cJSON_DeleteItemFromObjectCaseSensitive(c, "hidden_act");
	cJSON_AddStringToObject(c, "hidden_act", "gelu_pytorch_tanh");
	cJSON_AddStringToObject(c, "hidden_activation", "gelu_pytorch_tanh");
	set_num(c, "rms_norm_eps", 1e-6);
	set_num(c, "query_pre_attn_scalar", mk_head_dim(o));
	cJSON_AddNumberToObject(c, "attention_dropout", 0.0);
	cJSON_DeleteItemFromObjectCaseSensitive(c, "transformers_version");
	cJSON_AddStringToObject(c, "transformers_version", "4.55.0");
}

void qf_gemma2_mk_config(cJSON *c, const struct qf_mkmodel_opts *o)
{
	mk_common(c, o);
	cJSON_AddNumberToObject(c, "attn_logit_softcapping", 50.0);
	cJSON_AddNumberToObject(c, "final_logit_softcapping", 30.0);
	cJSON_AddNumberToObject(c, "sliding_window", mk_window(o, 4096));
	cJSON_AddStringToObject(c, "cache_implementation", "hybrid");
}

void qf_gemma3_mk_config(cJSON *c, const struct qf_mkmodel_opts *o)
{
	cJSON *rs, *lt;
	int l;

	mk_common(c, o);
	cJSON_AddNullToObject(c, "attn_logit_softcapping");
	cJSON_AddNullToObject(c, "final_logit_softcapping");
	cJSON_AddNumberToObject(c, "sliding_window", mk_window(o, 512));
	cJSON_AddNumberToObject(c, "sliding_window_pattern", 6);
	lt = cJSON_AddArrayToObject(c, "layer_types");
	for (l = 0; l < o->layers; l++)
		cJSON_AddItemToArray(lt, cJSON_CreateString((l + 1) % 6 ?
					"sliding_attention" : "full_attention"));
	set_num(c, "rope_theta", 1000000.0);
	cJSON_AddNumberToObject(c, "rope_local_base_freq", 10000.0);
	rs = cJSON_AddObjectToObject(c, "rope_scaling");
	cJSON_AddStringToObject(rs, "rope_type", "linear");
	cJSON_AddNumberToObject(rs, "factor", 8.0);
}

/* Llama's layer plus the sandwich norms (and Gemma 3's q/k norms). */
int qf_gemma2_mk_layer(struct qf_mk_list *t,
		       const struct qf_mkmodel_opts *o, int l)
{
	int ret = qf_mk_llama_layer(t, o, l);

	ret |= qf_mk_add(t, o->hidden, 0,
			 "model.layers.%d.pre_feedforward_layernorm.weight", l);
	ret |= qf_mk_add(t, o->hidden, 0,
			 "model.layers.%d.post_feedforward_layernorm.weight", l);
	return ret ? -ENOMEM : 0;
}

int qf_gemma3_mk_layer(struct qf_mk_list *t,
		       const struct qf_mkmodel_opts *o, int l)
{
	/* the q/k norms come with the row's QF_ARCH_QK_NORM */
	return qf_gemma2_mk_layer(t, o, l);
}
