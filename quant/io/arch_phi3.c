/*
 * arch_phi3.c - Phi-3 and Phi-4-mini (model_type phi3): the Llama layer
 * with q/k/v in one checkpoint tensor (self_attn.qkv_proj, rows q then k
 * then v) and gate/up in another (mlp.gate_up_proj, gate rows first),
 * partial rotary (partial_rotary_factor: RoPE on the first rot_dim
 * dimensions of each head) and LongRoPE (rope_scaling "longrope": one
 * factor per rotated frequency, short or long, and a cos/sin factor).
 *
 * The fused tensors stay fused everywhere a checkpoint is concerned
 * (the loaders of Phi-3 GPTQ / AWQ checkpoints expect qkv_proj.* and
 * gate_up_proj.*); only the forward pass sees the linears apart, as
 * row blocks of one tensor (qf_tf_linear_tensor).
 *
 * LongRoPE follows transformers' rope utilities: inv_freq_i = 1 /
 * (factor_i * theta^(2i / rot_dim)), the short factors while the
 * sequence fits original_max_position_embeddings, and cos/sin times
 * attention_factor, by default sqrt(1 + ln s / ln orig) with s =
 * max_position_embeddings / orig (1 when s <= 1).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "arch_i.h"

/* The config's number under key, or def when absent / not a number. */
static double num(const cJSON *o, const char *key, double def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(it) ? it->valuedouble : def;
}

/* A list of n positive finite factors into f; false otherwise. */
static bool factors(const cJSON *rs, const char *key, int n, float *f)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(rs, key);
	const cJSON *it;
	int i = 0;

	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
		return false;
	cJSON_ArrayForEach(it, a) {
		if (!cJSON_IsNumber(it) || !(it->valuedouble > 0) ||
		    !isfinite(it->valuedouble))
			return false;
		f[i++] = (float)it->valuedouble;
	}
	return true;
}

static int parse_longrope(const struct qf_model *m, const cJSON *o,
			  const cJSON *rs, struct qf_tf_config *c)
{
	double maxpos = num(o, "max_position_embeddings", 4096);
	double orig = num(o, "original_max_position_embeddings",
			  num(rs, "original_max_position_embeddings", -1));
	double s, af;

	c->rope_nfac = qf_tf_rot_dim(c) / 2;
	if (c->rope_nfac > QF_ROPE_MAX_FAC ||
	    !factors(rs, "short_factor", c->rope_nfac, c->rope_short) ||
	    !factors(rs, "long_factor", c->rope_nfac, c->rope_long)) {
		qf_err("%s: longrope needs short_factor and long_factor of "
		       "%d positive numbers each", m->dir, c->rope_nfac);
		return QF_EFORMAT;
	}
	/* without an original length, transformers takes rope "factor" */
	s = orig > 0 ? maxpos / orig : num(rs, "factor", 1);
	if (orig <= 0)
		orig = maxpos;
	if (!(orig >= 1 && orig < (1L << 30)) || !(s > 0)) {
		qf_err("%s: bad longrope context lengths", m->dir);
		return QF_EFORMAT;
	}
	af = s <= 1 ? 1 : sqrt(1 + log(s) / log(orig));
	af = num(rs, "attention_factor", af);
	if (!(af > 0) || !isfinite(af)) {
		qf_err("%s: bad longrope attention_factor", m->dir);
		return QF_EFORMAT;
	}
	c->rope_orig_max_pos = (int)orig;
	c->rope_attn = (float)af;
	return 0;
}

int qf_phi3_parse(const struct qf_model *m, const struct cJSON *jo,
		  struct qf_tf_config *c)
{
	const cJSON *o = (const cJSON *)jo;
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
	const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o,
							  "rope_parameters");
	const cJSON *ty;
	/* transformers 5 moved it into rope_parameters */
	double prf = num(o, "partial_rotary_factor",
			 num(rp, "partial_rotary_factor", 1.0));
	int rot = (int)(c->head_dim * prf);	/* int(), as transformers */

	if (!(prf > 0 && prf <= 1) || rot <= 0 || rot % 2) {
		qf_err("%s: partial_rotary_factor %g gives no even rotary "
		       "dimension of head_dim %d", m->dir, prf, c->head_dim);
		return QF_EFORMAT;
	}
	c->rot_dim = rot;
	if (!cJSON_IsObject(rs))
		rs = rp;
	ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
	if (!cJSON_IsString(ty))
		ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
	if (cJSON_IsString(ty) && (!strcmp(ty->valuestring, "longrope") ||
				   !strcmp(ty->valuestring, "su")))
		return parse_longrope(m, o, rs, c);
	return 0;
}

/* mkmodel --arch phi3: Phi-4-mini's rope (partial 0.75, LongRoPE). */
void qf_phi3_mk_config(struct cJSON *jc, const struct qf_mkmodel_opts *o)
{
	cJSON *c = (cJSON *)jc, *rs, *sf, *lf;
	int hd = o->head_dim > 0 ? o->head_dim : o->hidden / o->heads;
	double prf = hd % 8 ? 1.0 : 0.75;
	int n = (int)(hd * prf) / 2, i;

	cJSON_DeleteItemFromObjectCaseSensitive(c, "max_position_embeddings");
	cJSON_AddNumberToObject(c, "max_position_embeddings", 131072);
	cJSON_AddNumberToObject(c, "original_max_position_embeddings", 4096);
	cJSON_AddNumberToObject(c, "partial_rotary_factor", prf);
	cJSON_AddNumberToObject(c, "sliding_window", 262144);
	cJSON_AddNumberToObject(c, "resid_pdrop", 0.0);
	rs = cJSON_AddObjectToObject(c, "rope_scaling");
	cJSON_AddStringToObject(rs, "type", "longrope");
	sf = cJSON_AddArrayToObject(rs, "short_factor");
	lf = cJSON_AddArrayToObject(rs, "long_factor");
	/* the shapes of Phi-4-mini's: near 1, and growing to tens */
	for (i = 0; i < n; i++) {
		double t = n > 1 ? (double)i / (n - 1) : 0;

		cJSON_AddItemToArray(sf, cJSON_CreateNumber(
			round((1.0 + 0.25 * t * t) * 1e4) / 1e4));
		cJSON_AddItemToArray(lf, cJSON_CreateNumber(
			round((1.0 + 39.0 * t * t * t) * 1e4) / 1e4));
	}
}

#define LAYER "model.layers.%d."

int qf_phi3_mk_layer(struct qf_mk_list *t,
		     const struct qf_mkmodel_opts *o, int l)
{
	int64_t hd = o->head_dim > 0 ? o->head_dim : o->hidden / o->heads;
	int64_t h = o->hidden;
	int ret = 0;

	ret |= qf_mk_add(t, h, 0, LAYER "input_layernorm.weight", l);
	ret |= qf_mk_add(t, h, 0, LAYER "post_attention_layernorm.weight", l);
	ret |= qf_mk_add(t, (o->heads + 2 * o->kv_heads) * hd, h,
			 LAYER "self_attn.qkv_proj.weight", l);
	ret |= qf_mk_add(t, h, o->heads * hd, LAYER "self_attn.o_proj.weight",
			 l);
	ret |= qf_mk_add(t, 2 * (int64_t)o->inter, h,
			 LAYER "mlp.gate_up_proj.weight", l);
	ret |= qf_mk_add(t, h, o->inter, LAYER "mlp.down_proj.weight", l);
	return ret ? -ENOMEM : 0;
}
