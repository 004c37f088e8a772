/*
 * arch_moe.c - the mixture-of-experts families of the architecture table
 * (arch.c): Qwen3-MoE, Mixtral, OLMoE and Qwen2-MoE.  Their attention is
 * a known one (Qwen3's per-head q/k norms, Llama's, OLMoE's
 * whole-projection q/k norms, Qwen2's biases); what they add is a sparse
 * MoE block in place of the MLP: a router (a linear to one logit per
 * expert, softmax in fp32, top-k, the k weights renormalized or not) and
 * experts that are each a SwiGLU MLP; Qwen2-MoE adds a shared expert of
 * every token, scaled by sigmoid(x . shared_expert_gate).
 * The families differ only in the checkpoint names of the block and in
 * config.json's keys, so both are data here (struct qf_moe_names, the
 * parse hooks) and the kernels (quant/nn/moe.c) test config fields.
 *
 * Routers stay in source precision in every variant: a quantized router
 * sends tokens to other experts, which costs far more than its bytes
 * save, and transformers' and vLLM's GPTQ/AWQ MoE loaders expect it
 * unquantized (qf_moe_is_router).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch_i.h"

/* Qwen3-MoE and OLMoE name the block as Qwen2-MoE does, less its shared
 * expert. */
static const struct qf_moe_names qwen_names = {
	.router = "mlp.gate", .experts = "mlp.experts",
	.lin = { "gate_proj", "up_proj", "down_proj" },
};
/* Qwen2-MoE adds a shared expert with a sigmoid gate. */
static const struct qf_moe_names qwen2_names = {
	.router = "mlp.gate", .experts = "mlp.experts",
	.lin = { "gate_proj", "up_proj", "down_proj" },
	.shared = "mlp.shared_expert", .shared_gate = "mlp.shared_expert_gate",
};
/* Mixtral: w1 is the gate, w3 the up and w2 the down projection. */
static const struct qf_moe_names mixtral_names = {
	.router = "block_sparse_moe.gate",
	.experts = "block_sparse_moe.experts",
	.lin = { "w1", "w3", "w2" },
};

static const struct qf_moe_names *names_of(const struct qf_arch *a)
{
	if (!a || !(a->flags & QF_ARCH_MOE))
		return NULL;
	return !strcmp(a->model_type, "mixtral") ? &mixtral_names :
	       !strcmp(a->model_type, "qwen2_moe") ? &qwen2_names : &qwen_names;
}

const struct qf_moe_names *qf_moe_names_of(const char *model_type)
{
	return model_type ? names_of(qf_arch_find(model_type)) : NULL;
}

/* ------------------------------------------------------------------ */
/* config.json                                                        */

static double num(const cJSON *o, const char *key, double def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(it) ? it->valuedouble : def;
}

/* key as an integer in [1, max], def when absent, -1 when bad. */
static int pos_int(const cJSON *o, const char *key, int def, int max)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
	double d;

	if (!it || cJSON_IsNull(it))
		return def;
	d = cJSON_IsNumber(it) ? it->valuedouble : -1;
	return d == floor(d) && d >= 1 && d <= max ? (int)d : -1;
}

static bool flag(const cJSON *o, const char *key, bool def)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsBool(it) ? cJSON_IsTrue(it) : def;
}

/* mlp_only_layers: layer numbers below 256 (bits of c->mlp_only). */
static int parse_mlp_only(const struct qf_model *m, const cJSON *o,
			  struct qf_tf_config *c)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o,
							    "mlp_only_layers");
	const cJSON *it;

	if (!arr || cJSON_IsNull(arr))
		return 0;
	if (!cJSON_IsArray(arr))
		goto bad;
	cJSON_ArrayForEach(it, arr) {
		double d = cJSON_IsNumber(it) ? it->valuedouble : -1;

		if (d != floor(d) || d < 0 || d >= c->layers)
			goto bad;
		if (d >= 64 * 4) {
			qf_err("%s: mlp_only_layers past layer 255 are not "
			       "supported", m->dir);
			return QF_EUNSUPPORTED;
		}
		c->mlp_only[(int)d / 64] |= 1ULL << ((int)d % 64);
	}
	return 0;
bad:
	qf_err("%s: bad mlp_only_layers", m->dir);
	return QF_EFORMAT;
}

/*
 * The keys the families share, under their names: the expert count
 * (num_experts or Mixtral's num_local_experts), top-k, the expert's
 * intermediate size (the Qwens' moe_intermediate_size, else
 * intermediate_size), whether the top-k weights are renormalized, and
 * Qwen2-MoE's shared_expert_intermediate_size.
 */
static int parse_moe(const struct qf_model *m, const cJSON *o,
		     struct qf_tf_config *c)
{
	const cJSON *clip = cJSON_GetObjectItemCaseSensitive(o, "clip_qkv");
	bool mixtral;

	c->moe = names_of(c->arch);
	mixtral = c->moe == &mixtral_names;
	c->experts = pos_int(o, mixtral ? "num_local_experts" : "num_experts",
			     -1, 1 << 12);
	c->topk = pos_int(o, "num_experts_per_tok", -1, 1 << 12);
	c->moe_inter = pos_int(o, "moe_intermediate_size", c->inter, 1 << 24);
	c->sparse_step = pos_int(o, "decoder_sparse_step", 1, 1 << 16);
	c->shared_inter = c->moe->shared ?
		pos_int(o, "shared_expert_intermediate_size", -1, 1 << 24) : 0;
	/* Mixtral always renormalizes; the others say so (default off) */
	c->norm_topk = mixtral || flag(o, "norm_topk_prob", false);
	if (c->experts < 0 || c->topk < 0 || c->topk > c->experts ||
	    c->moe_inter < 0 || c->sparse_step < 0 || c->shared_inter < 0) {
		qf_err("%s: config.json lacks or has bad expert dimensions",
		       m->dir);
		return QF_EFORMAT;
	}
	if (clip && !cJSON_IsNull(clip)) {
		c->clip_qkv = (float)num(o, "clip_qkv", -1);
		if (!(c->clip_qkv > 0)) {
			qf_err("%s: bad clip_qkv", m->dir);
			return QF_EFORMAT;
		}
	}
	return parse_mlp_only(m, o, c);
}

int qf_arch_moe_parse(const struct qf_model *m, const struct cJSON *o,
		      struct qf_tf_config *c)
{
	return parse_moe(m, (const cJSON *)o, c);
}

bool qf_moe_layer_sparse(const struct qf_tf_config *c, int l)
{
	if (!c->moe || l < 0 || l >= c->layers)
		return false;
	if (l < 256 && (c->mlp_only[l / 64] >> (l % 64) & 1))
		return false;
	return (l + 1) % c->sparse_step == 0;
}

int qf_moe_names_expert(const struct qf_moe_names *nm, int l, int e,
			enum qf_moe_linear k, char *out, size_t cap)
{
	if (e < 0)
		return snprintf(out, cap, "model.layers.%d.%s.%s", l,
				nm->shared, nm->lin[k]);
	return snprintf(out, cap, "model.layers.%d.%s.%d.%s", l, nm->experts,
			e, nm->lin[k]);
}

void qf_moe_expert_name(const struct qf_tf_config *c, int l, int e,
			enum qf_moe_linear k, char *out, size_t cap)
{
	qf_moe_names_expert(c->moe, l, e == c->experts && c->moe->shared ?
			    -1 : e, k, out, cap);
}

void qf_moe_router_name(const struct qf_tf_config *c, int l, char *out,
			size_t cap)
{
	snprintf(out, cap, "model.layers.%d.%s", l, c->moe->router);
}

/* m's block names, and name past "model.layers.N." in *rest; NULL when
 * m is no MoE model or name is not in a layer. */
static const struct qf_moe_names *in_layer(const struct qf_model *m,
					   const char *name, const char **rest)
{
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(
		(const cJSON *)m->config, "model_type");
	const struct qf_moe_names *nm = cJSON_IsString(mt) ?
		names_of(qf_arch_find(mt->valuestring)) : NULL;
	char *end;

	if (!nm || strncmp(name, "model.layers.", 13))
		return NULL;
	strtol(name + 13, &end, 10);
	if (end == name + 13 || *end != '.')
		return NULL;
	*rest = end + 1;
	return nm;
}

bool qf_moe_is_router(const struct qf_model *m, const char *name)
{
	const char *p;
	const struct qf_moe_names *nm = in_layer(m, name, &p);
	size_t rl = nm ? strlen(nm->router) : 0;

	size_t gl = nm && nm->shared_gate ? strlen(nm->shared_gate) : 0;

	return nm && ((!strncmp(p, nm->router, rl) &&
		       !strcmp(p + rl, ".weight")) ||
		      (gl && !strncmp(p, nm->shared_gate, gl) &&
		       !strcmp(p + gl, ".weight")));
}

bool qf_moe_is_expert(const struct qf_model *m, const char *name)
{
	const char *p;
	const struct qf_moe_names *nm = in_layer(m, name, &p);
	size_t el = nm ? strlen(nm->experts) : 0, n = strlen(name);

	size_t sl = nm && nm->shared ? strlen(nm->shared) : 0;

	return nm && ((!strncmp(p, nm->experts, el) && p[el] == '.') ||
		      (sl && !strncmp(p, nm->shared, sl) && p[sl] == '.')) &&
	       n > 7 && !strcmp(name + n - 7, ".weight");
}

/* ------------------------------------------------------------------ */
/* quantfs mkmodel --arch                                             */

static int mk_experts(const struct qf_mkmodel_opts *o)
{
	return o->experts > 0 ? o->experts : 8;
}

static int mk_topk(const struct qf_mkmodel_opts *o)
{
	return o->topk > 0 ? o->topk : 2;
}

static int mk_inter(const struct qf_mkmodel_opts *o)
{
	return o->moe_inter > 0 ? o->moe_inter :
	       o->inter / 2 > 0 ? o->inter / 2 : 1;
}

void qf_arch_moe_mk_config(cJSON *c, const struct qf_mkmodel_opts *o)
{
	bool mixtral = !strcmp(o->arch, "mixtral");

	cJSON_AddNumberToObject(c, mixtral ? "num_local_experts" :
				"num_experts", mk_experts(o));
	cJSON_AddNumberToObject(c, "num_experts_per_tok", mk_topk(o));
	if (!strncmp(o->arch, "qwen", 4)) {	/* qwen3_moe, qwen2_moe */
		bool q2 = !strcmp(o->arch, "qwen2_moe");

		cJSON_AddNumberToObject(c, "moe_intermediate_size",
					mk_inter(o));
		cJSON_AddNumberToObject(c, "decoder_sparse_step", 1);
		cJSON_AddArrayToObject(c, "mlp_only_layers");
		cJSON_AddBoolToObject(c, "norm_topk_prob", !q2);
		if (q2)
			cJSON_AddNumberToObject(c,
				"shared_expert_intermediate_size",
				2 * mk_inter(o));
	} else {
		/* the expert's size is intermediate_size here */
		cJSON_ReplaceItemInObject(c, "intermediate_size",
					  cJSON_CreateNumber(mk_inter(o)));
	}
	if (!strcmp(o->arch, "olmoe")) {
		cJSON_AddBoolToObject(c, "norm_topk_prob", false);
		cJSON_AddNullToObject(c, "clip_qkv");
	}
	cJSON_AddNumberToObject(c, "router_aux_loss_coef", 0.001);
}

int qf_arch_moe_mk_layer(struct qf_mk_list *t,
			 const struct qf_mkmodel_opts *o, int l)
{
	const struct qf_arch *a = qf_arch_find(o->arch);
	const struct qf_moe_names *nm = names_of(a);
	int hd = o->head_dim > 0 ? o->head_dim : o->hidden / o->heads;
	int64_t qd = (int64_t)o->heads * hd, kvd = (int64_t)o->kv_heads * hd;
	int e, ret = 0;
	const char *pre = "model.layers";

	if (mk_topk(o) > mk_experts(o))
		return -EINVAL;

	ret |= qf_mk_add(t, o->hidden, 0, "%s.%d.input_layernorm.weight", pre, l);
	ret |= qf_mk_add(t, o->hidden, 0, "%s.%d.post_attention_layernorm.weight", pre, l);
	ret |= qf_mk_add(t, qd, o->hidden, "%s.%d.self_attn.q_proj.weight", pre, l);
	ret |= qf_mk_add(t, kvd, o->hidden, "%s.%d.self_attn.k_proj.weight", pre, l);
	ret |= qf_mk_add(t, kvd, o->hidden, "%s.%d.self_attn.v_proj.weight", pre, l);
	ret |= qf_mk_add(t, o->hidden, qd, "%s.%d.self_attn.o_proj.weight", pre, l);
	if (a->flags & QF_ARCH_QK_NORM_FULL) {
		ret |= qf_mk_add(t, qd, 0, "%s.%d.self_attn.q_norm.weight", pre, l);
		ret |= qf_mk_add(t, kvd, 0, "%s.%d.self_attn.k_norm.weight", pre, l);
	} else if (a->flags & QF_ARCH_QK_NORM) {
		ret |= qf_mk_add(t, hd, 0, "%s.%d.self_attn.q_norm.weight", pre, l);
		ret |= qf_mk_add(t, hd, 0, "%s.%d.self_attn.k_norm.weight", pre, l);
	}
	if (a->flags & QF_ARCH_QKV_BIAS) {
		ret |= qf_mk_add(t, qd, 0, "%s.%d.self_attn.q_proj.bias", pre, l);
		ret |= qf_mk_add(t, kvd, 0, "%s.%d.self_attn.k_proj.bias", pre, l);
		ret |= qf_mk_add(t, kvd, 0, "%s.%d.self_attn.v_proj.bias", pre, l);
	}
	if (nm->shared) {
		int si = 2 * mk_inter(o);

		ret |= qf_mk_add(t, 1, o->hidden, "%s.%d.%s.weight", pre, l,
				 nm->shared_gate);
		ret |= qf_mk_add(t, si, o->hidden, "%s.%d.%s.%s.weight", pre, l,
				 nm->shared, nm->lin[QF_MOE_GATE]);
		ret |= qf_mk_add(t, si, o->hidden, "%s.%d.%s.%s.weight", pre, l,
				 nm->shared, nm->lin[QF_MOE_UP]);
		ret |= qf_mk_add(t, o->hidden, si, "%s.%d.%s.%s.weight", pre, l,
				 nm->shared, nm->lin[QF_MOE_DOWN]);
	}
	ret |= qf_mk_add(t, mk_experts(o), o->hidden, "%s.%d.%s.weight", pre,
			 l, nm->router);
	for (e = 0; e < mk_experts(o); e++) {
		ret |= qf_mk_add(t, mk_inter(o), o->hidden, "%s.%d.%s.%d.%s.weight",
				 pre, l, nm->experts, e, nm->lin[QF_MOE_GATE]);
		ret |= qf_mk_add(t, mk_inter(o), o->hidden, "%s.%d.%s.%d.%s.weight",
				 pre, l, nm->experts, e, nm->lin[QF_MOE_UP]);
		ret |= qf_mk_add(t, o->hidden, mk_inter(o), "%s.%d.%s.%d.%s.weight",
				 pre, l, nm->experts, e, nm->lin[QF_MOE_DOWN]);
	}
	return ret ? -ENOMEM : 0;
}
