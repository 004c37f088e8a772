/*
 * gguf.c - GGUF for llama.cpp: the file plan (tensor naming, metadata)
 * and tensor production.  The ggml block codecs are in ggml_quants.c,
 * the tokenizer.* keys in gguf_vocab.c, the KV writer in gguf_i.h.
 *
 * Sources of each detail (llama.cpp, ggml-org/llama.cpp):
 *  - file layout: docs/gguf.md (ggml/docs), gguf-py/gguf/gguf_writer.py
 *    (value types of each key, tensor infos with dims innermost first,
 *    every tensor padded to the alignment);
 *  - keys: gguf-py/gguf/constants.py; names and the q/k permutation:
 *    convert_hf_to_gguf.py (LlamaModel registers LlamaForCausalLM and
 *    MistralForCausalLM as arch llama; Qwen2Model / Qwen3Model do not
 *    permute), conversion/llama.py, conversion/qwen.py;
 *  - Gemma (Gemma2Model, Gemma3Model in convert_hf_to_gguf.py,
 *    src/llama-model.cpp): the sandwich norms as post_attention_norm,
 *    ffn_norm (pre-feedforward) and post_ffw_norm, every norm weight
 *    stored as w + 1, no output.weight for gemma2.
 *
 * All multi-byte values are written little-endian whatever the host.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_i.h"

/* ------------------------------------------------------------------ */
/* tensor plan                                                        */

enum dim {			/* a dimension, in terms of the config */
	D_NONE,
	D_HIDDEN,
	D_Q,				/* heads * head_dim */
	D_KV,				/* kv_heads * head_dim */
	D_INTER,
	D_HD,				/* head_dim */
	D_QKV,				/* phi3's fused q, k, v rows */
	D_INTER2,			/* phi3's fused gate and up rows */
	D_QN,				/* q_norm: head_dim, or heads * head_dim
					 * (olmoe: the whole projection) */
	D_KN,				/* k_norm: likewise with kv heads */
};

enum {				/* which architectures read a tensor */
	A_LLAMA = 1,
	A_QWEN2 = 2,
	A_QWEN3 = 4,
	A_GEMMA2 = 8,
	A_GEMMA3 = 16,
	A_PHI3 = 32,			/* fused qkv and gate_up */
	A_QWEN3MOE = 64,
	A_OLMOE = 128,
	A_QWEN2MOE = 256,
	A_GEMMA = A_GEMMA2 | A_GEMMA3,	/* sandwich norms, stored as 1 + w */
	A_ANY = 511,
	A_ALL = A_ANY & ~A_PHI3,	/* the separate-linear families */
	A_LLAMAS = A_ANY & ~A_GEMMA,	/* one pre-MLP norm, ffn_norm */
	A_QKNORM = A_QWEN3 | A_QWEN3MOE | A_OLMOE | A_GEMMA3,
	A_QKVB = A_QWEN2 | A_QWEN2MOE,	/* q/k/v biases */
};

struct map_ent {
	const char *hf;			/* after "model.layers.N." */
	const char *gg;			/* after "blk.N." */
	enum qf_gguf_role role;
	enum dim d0, d1;		/* HF shape [d0] or [d0, d1] */
	unsigned need;			/* archs where it is required */
	unsigned allow;			/* archs llama.cpp loads it in */
	int perm;			/* 1: by heads, 2: by kv heads */
};

static const struct map_ent layer_map[] = {
	{ "input_layernorm.weight", "attn_norm.weight", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, A_ANY, A_ANY, 0 },
	{ "self_attn.qkv_proj.weight", "attn_qkv.weight", QF_GGUF_ROLE_ATTN_Q,
	  D_QKV, D_HIDDEN, A_PHI3, A_PHI3, 0 },
	{ "self_attn.q_proj.weight", "attn_q.weight", QF_GGUF_ROLE_ATTN_Q,
	  D_Q, D_HIDDEN, A_ALL, A_ALL, 1 },
	{ "self_attn.q_proj.bias", "attn_q.bias", QF_GGUF_ROLE_VECTOR,
	  D_Q, D_NONE, A_QKVB, A_LLAMA | A_QKVB, 1 },
	{ "self_attn.k_proj.weight", "attn_k.weight", QF_GGUF_ROLE_ATTN_K,
	  D_KV, D_HIDDEN, A_ALL, A_ALL, 2 },
	{ "self_attn.k_proj.bias", "attn_k.bias", QF_GGUF_ROLE_VECTOR,
	  D_KV, D_NONE, A_QKVB, A_LLAMA | A_QKVB, 2 },
	{ "self_attn.v_proj.weight", "attn_v.weight", QF_GGUF_ROLE_ATTN_V,
	  D_KV, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "self_attn.v_proj.bias", "attn_v.bias", QF_GGUF_ROLE_VECTOR,
	  D_KV, D_NONE, A_QKVB, A_LLAMA | A_QKVB, 0 },
	{ "self_attn.q_norm.weight", "attn_q_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_QN, D_NONE, A_QKNORM, A_QKNORM, 0 },
	{ "self_attn.k_norm.weight", "attn_k_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_KN, D_NONE, A_QKNORM, A_QKNORM, 0 },
	{ "self_attn.o_proj.weight", "attn_output.weight",
	  QF_GGUF_ROLE_ATTN_OUT, D_HIDDEN, D_Q, A_ANY, A_ANY, 0 },
	{ "self_attn.o_proj.bias", "attn_output.bias", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, 0, A_LLAMA, 0 },
	{ "post_attention_layernorm.weight", "ffn_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HIDDEN, D_NONE, A_LLAMAS, A_LLAMAS, 0 },
	{ "post_attention_layernorm.weight", "post_attention_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HIDDEN, D_NONE, A_GEMMA, A_GEMMA, 0 },
	{ "pre_feedforward_layernorm.weight", "ffn_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HIDDEN, D_NONE, A_GEMMA, A_GEMMA, 0 },
	{ "post_feedforward_layernorm.weight", "post_ffw_norm.weight",
	  QF_GGUF_ROLE_VECTOR, D_HIDDEN, D_NONE, A_GEMMA, A_GEMMA, 0 },
	/* llama.cpp's phi3 ffn_up holds gate then up: swiglu of one tensor */
	{ "mlp.gate_up_proj.weight", "ffn_up.weight", QF_GGUF_ROLE_FFN_UP,
	  D_INTER2, D_HIDDEN, A_PHI3, A_PHI3, 0 },
	{ "mlp.gate_proj.weight", "ffn_gate.weight", QF_GGUF_ROLE_FFN_GATE,
	  D_INTER, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "mlp.gate_proj.bias", "ffn_gate.bias", QF_GGUF_ROLE_VECTOR,
	  D_INTER, D_NONE, 0, A_LLAMA, 0 },
	{ "mlp.up_proj.weight", "ffn_up.weight", QF_GGUF_ROLE_FFN_UP,
	  D_INTER, D_HIDDEN, A_ALL, A_ALL, 0 },
	{ "mlp.up_proj.bias", "ffn_up.bias", QF_GGUF_ROLE_VECTOR,
	  D_INTER, D_NONE, 0, A_LLAMA, 0 },
	{ "mlp.down_proj.weight", "ffn_down.weight", QF_GGUF_ROLE_FFN_DOWN,
	  D_HIDDEN, D_INTER, A_ANY, A_ANY, 0 },
	{ "mlp.down_proj.bias", "ffn_down.bias", QF_GGUF_ROLE_VECTOR,
	  D_HIDDEN, D_NONE, 0, A_LLAMA, 0 },
};

/* "blk.N." with N a plain decimal (no sign, no leading zero): N, else -1. */
static int blk_index(const char *gg, const char **rest)
{
	int l = 0, k;

	if (strncmp(gg, "blk.", 4))
		return -1;
	for (k = 4; gg[k] >= '0' && gg[k] <= '9' && k < 13; k++)
		l = l * 10 + (gg[k] - '0');
	if (k == 4 || gg[k] != '.' || (gg[4] == '0' && k > 5))
		return -1;
	*rest = gg + k + 1;
	return l;
}

/* A_* of llama.cpp's general.architecture, 0 for one quantfs does not
 * write. */
static unsigned arch_bit(const char *arch)
{
	static const struct {
		const char *name;
		unsigned bit;
	} a[] = {
		{ "llama", A_LLAMA }, { "qwen2", A_QWEN2 },
		{ "qwen3", A_QWEN3 }, { "gemma2", A_GEMMA2 },
		{ "gemma3", A_GEMMA3 }, { "phi3", A_PHI3 },
		{ "qwen3moe", A_QWEN3MOE }, { "olmoe", A_OLMOE },
		{ "qwen2moe", A_QWEN2MOE },
	};
	size_t k;

	for (k = 0; arch && k < sizeof(a) / sizeof(a[0]); k++)
		if (!strcmp(arch, a[k].name))
			return a[k].bit;
	return 0;
}

float qf_gguf_norm_shift(const char *arch, const char *gg)
{
	size_t n = strlen(gg);

	/* convert_hf_to_gguf.py: Gemma's norm weights + 1 */
	return (arch_bit(arch) & A_GEMMA) && n >= 11 &&
	       !strcmp(gg + n - 11, "norm.weight") ? 1.0f : 0.0f;
}

int qf_gguf_hf_name(const char *arch, const char *gg, char *hf, size_t cap,
		    int *perm)
{
	static const char *const top[][2] = {
		{ "token_embd.weight", "model.embed_tokens.weight" },
		{ "output_norm.weight", "model.norm.weight" },
		{ "output.weight", "lm_head.weight" },
	};
	unsigned a = arch_bit(arch);
	const char *rest = NULL;
	size_t k;
	int l, n;

	*perm = 0;
	if (!a)
		return QF_EUNSUPPORTED;
	for (k = 0; k < sizeof(top) / sizeof(top[0]); k++)
		if (!strcmp(gg, top[k][0]) &&
		    !(a == A_GEMMA2 && !strcmp(gg, "output.weight")))
			return snprintf(hf, cap, "%s", top[k][1]) < (int)cap ?
			       0 : -ENAMETOOLONG;
	l = blk_index(gg, &rest);
	for (k = 0; l >= 0 && k < sizeof(layer_map) / sizeof(layer_map[0]);
	     k++) {
		const struct map_ent *e = &layer_map[k];

		if (strcmp(rest, e->gg) || !(e->allow & a))
			continue;
		*perm = a == A_LLAMA ? e->perm : 0;
		n = snprintf(hf, cap, "model.layers.%d.%s", l, e->hf);
		return n >= 0 && n < (int)cap ? 0 : -ENAMETOOLONG;
	}
	return -ENOENT;
}

void qf_gguf_types_uniform(struct qf_gguf_types *ty, enum qf_ggml_type t)
{
	int r;

	for (r = 0; r < QF_GGUF_ROLE_COUNT; r++)
		ty->w[r] = r == QF_GGUF_ROLE_VECTOR ? QF_GGML_F32 : t;
	ty->mix = QF_GGUF_MIX_NONE;
	ty->fit = false;
	ty->fold = false;
}

static int64_t dim_of(const struct qf_tf_config *c, enum dim d)
{
	switch (d) {
	case D_HIDDEN:
		return c->hidden;
	case D_Q:
		return (int64_t)c->heads * c->head_dim;
	case D_KV:
		return (int64_t)c->kv_heads * c->head_dim;
	case D_INTER:
		return c->inter;
	case D_HD:
		return c->head_dim;
	case D_QKV:
		return (int64_t)(c->heads + 2 * c->kv_heads) * c->head_dim;
	case D_INTER2:
		return 2 * (int64_t)c->inter;
	case D_QN:
	case D_KN:
		return (c->arch->flags & QF_ARCH_QK_NORM_FULL ?
			d == D_QN ? c->heads : c->kv_heads : 1) *
		       (int64_t)c->head_dim;
	case D_NONE:
		break;
	}
	return 0;
}

/* Type of a 2-D tensor of cols columns, with llama.cpp-like fallbacks. */
static enum qf_ggml_type pick_type(enum qf_ggml_type t, int64_t cols)
{
	if (!qf_ggml_row_bytes(t, cols) && (t == QF_GGML_Q2_K ||
					    t == QF_GGML_Q3_K))
		t = QF_GGML_Q4_0;
	if (!qf_ggml_row_bytes(t, cols) && t == QF_GGML_Q4_K)
		t = QF_GGML_Q4_1;
	if (!qf_ggml_row_bytes(t, cols) && t == QF_GGML_IQ4_XS)
		t = QF_GGML_IQ4_NL;	/* as llama.cpp */
	if (!qf_ggml_row_bytes(t, cols) && (t == QF_GGML_Q5_K ||
					    t == QF_GGML_Q6_K))
		t = QF_GGML_Q8_0;
	if (!qf_ggml_row_bytes(t, cols))
		t = QF_GGML_F16;
	return t;
}

struct builder;
static enum qf_ggml_type mix_type(const struct builder *b,
				  enum qf_gguf_role role, const char *gg);

struct builder {
	const struct qf_model *m;
	const struct qf_gguf_types *types;
	struct qf_gguf_plan *p;
	bool *used;			/* [m->nt] source tensors consumed */
	size_t cap;
	size_t nxsrc;			/* p->xsrc entries taken */
	unsigned arch;			/* A_* */
};

/* Append tensor gg from HF tensor hf, checking its shape. */
static int add_tensor(struct builder *b, const char *hf, const char *gg,
		      enum qf_gguf_role role, int64_t d0, int64_t d1,
		      int perm_heads, bool required, const char **why)
{
	const struct qf_model_tensor *mt = qf_model_find(b->m, hf);
	struct qf_gguf_tensor *t;
	enum qf_dtype dt;

	if (!mt) {
		if (!required)
			return 0;
		qf_err("%s: missing tensor '%s'", b->m->dir, hf);
		VFAIL(QF_EFORMAT, "a tensor the architecture needs is missing");
	}
	b->used[mt - b->m->t] = true;
	if (mt->t->ndim != (d1 ? 2 : 1) || mt->t->shape[0] != d0 ||
	    (d1 && mt->t->shape[1] != d1)) {
		qf_err("%s: tensor '%s' has a shape the config does not give",
		       b->m->dir, hf);
		VFAIL(QF_EFORMAT, "a tensor's shape disagrees with "
		      "config.json");
	}
	dt = mt->t->dtype;
	if (dt != QF_DT_F32 && dt != QF_DT_F16 && dt != QF_DT_BF16)
		VFAIL(QF_EUNSUPPORTED, "a tensor is not F32, F16 or BF16");
	QF_ASSERT(b->p->nt < b->cap && strlen(gg) < QF_GGUF_NAME_MAX);
	t = &b->p->t[b->p->nt++];
	strcpy(t->name, gg);
	t->src = mt;
	t->role = role;
	t->ndim = d1 ? 2 : 1;
	t->ne[0] = d1 ? d1 : d0;
	t->ne[1] = d1 ? d0 : 1;
	t->type = d1 ? pick_type(mix_type(b, role, gg), d1) : QF_GGML_F32;
	t->nbytes = qf_ggml_row_bytes(t->type, t->ne[0]) * (uint64_t)t->ne[1];
	t->permute_heads = b->arch == A_LLAMA ? perm_heads : 0;
	t->shift = qf_gguf_norm_shift(b->p->arch, gg);
	return 0;
}

/* True when another entry of layer_map gives hf a place in arch. */
static bool placed(unsigned arch, const char *hf)
{
	size_t k;

	for (k = 0; k < sizeof(layer_map) / sizeof(layer_map[0]); k++)
		if ((layer_map[k].allow & arch) && !strcmp(layer_map[k].hf, hf))
			return true;
	return false;
}

static enum qf_ggml_type mix_type(const struct builder *b,
				  enum qf_gguf_role role, const char *gg)
{
	return b->types->mix ? qf_gguf_mix_type(b->types->mix, role, gg,
						&b->p->cfg, b->types->w[role]) :
	       b->types->w[role];
}

/*
 * One linear of every expert of layer l as one 3-D tensor gg, ne [cols,
 * rows, experts], as the converter stacks them: each expert's matrix is
 * checked and typed as a 2-D tensor, then the entries are folded into
 * the first.
 */
static int add_stacked(struct builder *b, int l, enum qf_moe_linear k,
		       const char *gg, enum qf_gguf_role role, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	int64_t rows = k == QF_MOE_DOWN ? c->hidden : c->moe_inter;
	int64_t cols = k == QF_MOE_DOWN ? c->moe_inter : c->hidden;
	const struct qf_model_tensor **xs = b->p->xsrc + b->nxsrc;
	size_t n0 = b->p->nt;
	struct qf_gguf_tensor *t;
	char hf[192];
	int e, ret;

	QF_ASSERT(b->nxsrc + (size_t)c->experts <= (size_t)c->layers *
		  QF_MOE_NLINEAR * (size_t)c->experts);
	for (e = 0; e < c->experts; e++) {
		qf_moe_expert_name(c, l, e, k, hf, sizeof(hf) - 8);
		strcat(hf, ".weight");
		ret = add_tensor(b, hf, gg, role, rows, cols, 0, true, why);
		if (ret)
			return ret;
		xs[e] = b->p->t[n0 + (size_t)e].src;
	}
	b->nxsrc += (size_t)c->experts;
	b->p->nt = n0 + 1;
	t = &b->p->t[n0];
	t->ndim = 3;
	t->ne[2] = c->experts;
	t->nbytes *= (uint64_t)c->experts;
	t->xsrc = xs;
	return 0;
}

/*
 * Qwen2-MoE's shared expert: ffn_{gate,up,down}_shexp, and its gate
 * [1, hidden] as an F32 ffn_gate_inp_shexp (llama.cpp reads n_embd).
 */
static int add_shared(struct builder *b, int l, const char **why)
{
	static const char *const gg_of[QF_MOE_NLINEAR] = {
		"ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp" };
	static const enum qf_gguf_role role[QF_MOE_NLINEAR] = {
		QF_GGUF_ROLE_FFN_GATE, QF_GGUF_ROLE_FFN_UP,
		QF_GGUF_ROLE_FFN_DOWN };
	const struct qf_tf_config *c = &b->p->cfg;
	int64_t si = c->shared_inter;
	char hf[160], gg[QF_GGUF_NAME_MAX];
	struct qf_gguf_tensor *t;
	int k, ret;

	snprintf(hf, sizeof(hf), "model.layers.%d.%s.weight", l,
		 c->moe->shared_gate);
	snprintf(gg, sizeof(gg), "blk.%d.ffn_gate_inp_shexp.weight", l);
	ret = add_tensor(b, hf, gg, QF_GGUF_ROLE_VECTOR, 1, c->hidden, 0,
			 true, why);
	if (ret)
		return ret;
	t = &b->p->t[b->p->nt - 1];
	t->type = QF_GGML_F32;
	t->nbytes = (uint64_t)c->hidden * 4;
	for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
		qf_moe_expert_name(c, l, c->experts, k, hf, sizeof(hf) - 8);
		strcat(hf, ".weight");
		snprintf(gg, sizeof(gg), "blk.%d.%s.weight", l, gg_of[k]);
		ret = add_tensor(b, hf, gg, role[k],
				 k == QF_MOE_DOWN ? c->hidden : si,
				 k == QF_MOE_DOWN ? si : c->hidden, 0, true,
				 why);
	}
	return ret;
}

/*
 * A sparse layer's MoE block: the router as ffn_gate_inp in F32 (the
 * converter's choice, which llama.cpp's quantizer keeps), the experts as
 * ffn_{gate,up,down}_exps.
 */
static int add_experts(struct builder *b, int l, const char **why)
{
	static const struct {
		const char *gg;
		enum qf_gguf_role role;
	} ex[QF_MOE_NLINEAR] = {
		[QF_MOE_GATE] = { "ffn_gate_exps", QF_GGUF_ROLE_FFN_GATE },
		[QF_MOE_UP] = { "ffn_up_exps", QF_GGUF_ROLE_FFN_UP },
		[QF_MOE_DOWN] = { "ffn_down_exps", QF_GGUF_ROLE_FFN_DOWN },
	};
	const struct qf_tf_config *c = &b->p->cfg;
	char hf[160], gg[QF_GGUF_NAME_MAX];
	struct qf_gguf_tensor *t;
	int k, ret;

	qf_moe_router_name(c, l, hf, sizeof(hf) - 8);
	strcat(hf, ".weight");
	snprintf(gg, sizeof(gg), "blk.%d.ffn_gate_inp.weight", l);
	ret = add_tensor(b, hf, gg, QF_GGUF_ROLE_VECTOR, c->experts,
			 c->hidden, 0, true, why);
	if (ret)
		return ret;
	t = &b->p->t[b->p->nt - 1];
	t->type = QF_GGML_F32;
	t->nbytes = (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * 4;
	for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
		snprintf(gg, sizeof(gg), "blk.%d.%s.weight", l, ex[k].gg);
		ret = add_stacked(b, l, k, gg, ex[k].role, why);
	}
	return ret || !c->shared_inter ? ret : add_shared(b, l, why);
}

/*
 * What llama.cpp's MoE architectures compute differently from a config:
 * every layer sparse, the top-k weights renormalized by qwen3moe and
 * llama (Mixtral) and never by olmoe and qwen2moe, no q/k/v clamp,
 * output.weight always present in olmoe and qwen2moe, and olmoe's k_norm
 * as wide as its q_norm.
 */
static int moe_check(const struct builder *b, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	int l;

	for (l = 0; l < c->layers; l++)
		if (!qf_moe_layer_sparse(c, l))
			VFAIL(QF_EUNSUPPORTED, "dense MLP layers among the "
			      "MoE ones (llama.cpp's have none)");
	if (c->norm_topk != (b->arch != A_OLMOE && b->arch != A_QWEN2MOE))
		VFAIL(QF_EUNSUPPORTED, "norm_topk_prob differs from what "
		      "llama.cpp does for this architecture");
	if (c->clip_qkv > 0)
		VFAIL(QF_EUNSUPPORTED, "clip_qkv (llama.cpp's olmoe does not "
		      "clamp)");
	if ((b->arch == A_OLMOE || b->arch == A_QWEN2MOE) && c->tie)
		VFAIL(QF_EUNSUPPORTED, "tied embeddings (llama.cpp's olmoe "
		      "and qwen2moe need output.weight)");
	if (b->arch == A_OLMOE && c->kv_heads != c->heads)
		VFAIL(QF_EUNSUPPORTED, "grouped-query attention (llama.cpp's "
		      "olmoe has k_norm over the whole width)");
	return 0;
}

static int add_layer(struct builder *b, int l, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	bool sparse = qf_moe_layer_sparse(c, l);
	char hf[160], gg[QF_GGUF_NAME_MAX];
	size_t k;
	int ret;

	for (k = 0; k < sizeof(layer_map) / sizeof(layer_map[0]); k++) {
		const struct map_ent *e = &layer_map[k];
		int perm = e->perm == 1 ? c->heads :
			   e->perm == 2 ? c->kv_heads : 0;

		if (sparse && !strncmp(e->hf, "mlp.", 4))
			continue;	/* the experts, below */
		snprintf(hf, sizeof(hf), "model.layers.%d.%s", l, e->hf);
		snprintf(gg, sizeof(gg), "blk.%d.%s", l, e->gg);
		if (!(e->allow & b->arch)) {
			if (qf_model_find(b->m, hf) &&
			    !placed(b->arch, e->hf)) {
				qf_err("%s: llama.cpp's %s has no place for "
				       "'%s'", b->m->dir, b->p->arch, hf);
				VFAIL(QF_EUNSUPPORTED, "a tensor llama.cpp "
				      "does not load for this architecture");
			}
			continue;
		}
		ret = add_tensor(b, hf, gg, e->role, dim_of(c, e->d0),
				 dim_of(c, e->d1), perm,
				 (e->need & b->arch) != 0, why);
		if (ret)
			return ret;
	}
	return sparse ? add_experts(b, l, why) : 0;
}

/*
 * A vector computed from config.json, not read from a tensor: llama3
 * rope scaling's rope_freqs.weight [head_dim / 2], LongRoPE's
 * rope_factors_long / _short.weight [rot_dim / 2] (conversion/phi.py).
 */
static void add_rope_vector(struct builder *b, const char *name, int64_t n)
{
	struct qf_gguf_tensor *t = &b->p->t[b->p->nt++];

	strcpy(t->name, name);
	t->role = QF_GGUF_ROLE_VECTOR;
	t->type = QF_GGML_F32;
	t->ndim = 1;
	t->ne[0] = n;
	t->ne[1] = 1;
	t->nbytes = (uint64_t)t->ne[0] * 4;
}

static int plan_tensors(struct builder *b, const char **why)
{
	const struct qf_tf_config *c = &b->p->cfg;
	size_t i;
	int l, ret;

	b->cap = (size_t)c->layers * (sizeof(layer_map) / sizeof(layer_map[0]))
		 + 5 + (size_t)c->experts;	/* + add_stacked()'s fold */
	b->p->t = calloc(b->cap + (c->moe ? (size_t)c->layers * 8 : 0),
			 sizeof(*b->p->t));
	b->cap += c->moe ? (size_t)c->layers * 8 : 0;
	b->used = calloc(b->m->nt ? b->m->nt : 1, sizeof(*b->used));
	if (c->moe)
		b->p->xsrc = calloc((size_t)c->layers * QF_MOE_NLINEAR *
				    (size_t)c->experts, sizeof(*b->p->xsrc));
	if (!b->p->t || !b->used || (c->moe && !b->p->xsrc))
		return -ENOMEM;
	if (c->rope_factor > 0)
		add_rope_vector(b, "rope_freqs.weight", c->head_dim / 2);
	if (c->rope_nfac > 0) {
		add_rope_vector(b, "rope_factors_long.weight", c->rope_nfac);
		add_rope_vector(b, "rope_factors_short.weight", c->rope_nfac);
	}
	ret = add_tensor(b, "model.embed_tokens.weight", "token_embd.weight",
			 QF_GGUF_ROLE_EMBD, c->vocab, c->hidden, 0, true, why);
	for (l = 0; l < c->layers && !ret; l++)
		ret = add_layer(b, l, why);
	if (!ret)
		ret = add_tensor(b, "model.norm.weight", "output_norm.weight",
				 QF_GGUF_ROLE_VECTOR, c->hidden, 0, 0, true,
				 why);
	if (!ret && !c->tie && b->arch == A_GEMMA2) {
		/* llama.cpp's gemma2 always reads token_embd as output */
		*why = "gemma2 with an untied lm_head";
		ret = QF_EUNSUPPORTED;
	}
	if (!ret && !c->tie)
		ret = add_tensor(b, "lm_head.weight", "output.weight",
				 QF_GGUF_ROLE_OUTPUT, c->vocab, c->hidden, 0,
				 true, why);
	for (i = 0; i < b->m->nt && !ret; i++) {
		const char *name = b->m->t[i].name;
		size_t n = strlen(name);

		/* tied: llama.cpp reuses token_embd, a stored copy is moot */
		if (b->used[i] || (c->tie && !strcmp(name, "lm_head.weight")) ||
		    (n > 20 && !strcmp(name + n - 20, ".rotary_emb.inv_freq")))
			continue;
		qf_err("%s: no GGUF name for tensor '%s'", b->m->dir, name);
		ret = QF_EUNSUPPORTED;
		*why = "a tensor with no GGUF name";
	}
	return ret;
}

/* general.file_type (llama_ftype) of the type most weights use. */
static uint32_t file_type(const struct qf_gguf_plan *p)
{
	static const struct {
		enum qf_ggml_type t;
		uint32_t ftype;
	} ft[] = {
		{ QF_GGML_F32, 0 }, { QF_GGML_F16, 1 }, { QF_GGML_Q4_0, 2 },
		{ QF_GGML_Q4_1, 3 }, { QF_GGML_Q8_0, 7 },
		{ QF_GGML_Q4_K, 14 },	/* MOSTLY_Q4_K_S; _M: 15, below */
		{ QF_GGML_Q6_K, 18 }, { QF_GGML_BF16, 32 },
	};
	uint64_t numel[sizeof(ft) / sizeof(ft[0])] = { 0 };
	size_t i, k, best = 0;

	for (i = 0; i < p->nt; i++)
		for (k = 0; k < sizeof(ft) / sizeof(ft[0]); k++)
			if (p->t[i].ndim >= 2 && p->t[i].type == ft[k].t)
				numel[k] += (uint64_t)(p->t[i].ne[0] *
						       p->t[i].ne[1]) *
					    (uint64_t)(p->t[i].ndim == 3 ?
						       p->t[i].ne[2] : 1);
	for (k = 1; k < sizeof(ft) / sizeof(ft[0]); k++)
		if (numel[k] > numel[best])
			best = k;
	return ft[best].ftype;
}

/*
 * Gemma's keys as convert_hf_to_gguf.py writes them (Gemma2Model,
 * Gemma3Model): the soft-caps (gemma2), the sliding window and Gemma 3's
 * linear rope scaling of its global layers.  llama.cpp hard-codes which
 * layers slide (gemma2 every 2nd, gemma3 5 of 6), the sliding layers'
 * rope base (10000) and the query scale (head_dim^-0.5 but for the 27B).
 */
static void write_gemma_kv(struct kvw *w, const struct qf_tf_config *c)
{
	if (!c->window_per_layer)
		return;
	if (c->attn_softcap > 0)
		kv_f32(w, ".attn_logit_softcapping", c->attn_softcap);
	if (c->final_softcap > 0)
		kv_f32(w, ".final_logit_softcapping", c->final_softcap);
	kv_u32(w, ".attention.sliding_window", (uint32_t)c->sliding_window);
	if (c->rope_linear > 0) {
		kv_str(w, ".rope.scaling.type", "linear");
		kv_f32(w, ".rope.scaling.factor", c->rope_linear);
	}
}

/* phi3's keys, as conversion/phi.py writes them. */
static void write_longrope_kv(struct kvw *w, const struct qf_tf_config *c)
{
	if (c->rope_orig_max_pos > 0)
		kv_u32(w, ".rope.scaling.original_context_length",
		       (uint32_t)c->rope_orig_max_pos);
	if (c->rope_nfac > 0)
		kv_f32(w, ".rope.scaling.attn_factor",
		       c->rope_attn > 0 ? c->rope_attn : 1.0f);
	/* 0 when config.json has none; llama.cpp reads it, then ignores
	 * the window for phi3 */
	kv_u32(w, ".attention.sliding_window", (uint32_t)c->sliding_window);
}

static void write_model_kv(struct kvw *w, const struct qf_model *m,
			   const struct qf_gguf_plan *p)
{
	const struct qf_tf_config *c = &p->cfg;
	const cJSON *hd = jget(m->config, "head_dim");
	long ctx = qf_model_cfg_int(m, "max_position_embeddings", 2048);

	kv_str(w, "general.architecture", p->arch);
	kv_str(w, "general.name", m->name);
	kv_u32(w, "general.alignment", QF_GGUF_ALIGN);
	kv_u32(w, "general.file_type", p->mix ? (uint32_t)p->mix :
	       file_type(p));
	kv_u32(w, "general.quantization_version", 2);
	kv_u32(w, ".vocab_size", (uint32_t)c->vocab);
	kv_u32(w, ".context_length",
	       ctx > 0 && ctx <= UINT32_MAX ? (uint32_t)ctx : 2048);
	kv_u32(w, ".embedding_length", (uint32_t)c->hidden);
	kv_u32(w, ".block_count", (uint32_t)c->layers);
	kv_u32(w, ".feed_forward_length", (uint32_t)c->inter);
	if (c->moe) {
		kv_u32(w, ".expert_count", (uint32_t)c->experts);
		kv_u32(w, ".expert_used_count", (uint32_t)c->topk);
		kv_u32(w, ".expert_feed_forward_length",
		       (uint32_t)c->moe_inter);
		if (c->shared_inter)
			kv_u32(w, ".expert_shared_feed_forward_length",
			       (uint32_t)c->shared_inter);
	}
	kv_u32(w, ".attention.head_count", (uint32_t)c->heads);
	kv_u32(w, ".attention.head_count_kv", (uint32_t)c->kv_heads);
	kv_f32(w, ".rope.freq_base", c->rope_theta);
	kv_u32(w, ".rope.dimension_count", (uint32_t)qf_tf_rot_dim(c));
	kv_f32(w, ".attention.layer_norm_rms_epsilon", c->rms_eps);
	/* the converter writes them whenever config.json has head_dim */
	if ((hd && !cJSON_IsNull(hd)) || c->head_dim * c->heads != c->hidden) {
		kv_u32(w, ".attention.key_length", (uint32_t)c->head_dim);
		kv_u32(w, ".attention.value_length", (uint32_t)c->head_dim);
	}
	write_gemma_kv(w, c);
	if (c->arch->flags & QF_ARCH_LONGROPE)
		write_longrope_kv(w, c);
}

static void write_tensor_infos(struct kvw *w, const struct qf_gguf_plan *p)
{
	size_t i;
	int d;

	for (i = 0; i < p->nt; i++) {
		const struct qf_gguf_tensor *t = &p->t[i];

		w_str(w, t->name, strlen(t->name));
		w_u32(w, (uint32_t)t->ndim);
		for (d = 0; d < t->ndim; d++)
			w_u64(w, (uint64_t)t->ne[d]);
		w_u32(w, (uint32_t)t->type);
		w_u64(w, t->offset - p->data_off);
	}
}

static uint64_t align_up(uint64_t x)
{
	return (x + QF_GGUF_ALIGN - 1) / QF_GGUF_ALIGN * QF_GGUF_ALIGN;
}

static int write_header(const struct qf_model *m, struct qf_gguf_plan *p,
			const char **why)
{
	struct kvw w = { .b = &p->header };
	uint64_t info = 0, off;
	size_t i, kv_at;
	int ret;
	int d;

	memcpy(w.arch, p->arch, sizeof(w.arch));
	w_bytes(&w, "GGUF", 4);
	w_u32(&w, QF_GGUF_VERSION);
	w_u64(&w, p->nt);
	kv_at = p->header.len;
	w_u64(&w, 0);			/* KV count, patched below */
	write_model_kv(&w, m, p);
	ret = qf_gguf_vocab_write(&w, m, p, p->cfg.vocab, why);
	if (ret)
		return ret;
	if (w.err)
		return w.err;
	/* the tensor infos' size does not depend on the offsets */
	for (i = 0; i < p->nt; i++)
		info += 8 + strlen(p->t[i].name) + 4 + 8 *
			(uint64_t)p->t[i].ndim + 4 + 8;
	p->data_off = align_up(p->header.len + info);
	off = p->data_off;
	for (i = 0; i < p->nt; i++) {
		p->t[i].offset = off;
		off = align_up(off + p->t[i].nbytes);
	}
	p->size = off;
	write_tensor_infos(&w, p);
	while (!w.err && p->header.len < p->data_off)
		w_bytes(&w, "", 1);
	if (w.err)
		return w.err;
	QF_ASSERT(p->header.len == p->data_off);
	for (d = 0; d < 8; d++)
		p->header.data[kv_at + d] = (char)(w.nkv >> 8 * d);
	return 0;
}

int qf_gguf_plan_init(const struct qf_model *m,
		      const struct qf_gguf_types *types,
		      struct qf_gguf_plan *out, const char **why)
{
	struct builder b = { .m = m, .types = types, .p = out };
	const char *mt = jstr(m->config, "model_type");
	const struct qf_arch *arch;
	const char *dummy;
	int r, ret;

	memset(out, 0, sizeof(*out));
	if (!why)
		why = &dummy;
	*why = NULL;
	for (r = 0; r < QF_GGUF_ROLE_COUNT; r++)
		if (!qf_ggml_type_known(types->w[r]))
			VFAIL(-EINVAL, "unknown ggml type");
	arch = qf_arch_find(mt);
	if (!arch || !arch_bit(arch->gguf))
		VFAIL(QF_EUNSUPPORTED, "the model_type has no GGUF view (see "
		      "quantfs(1), ARCHITECTURES)");
	b.arch = arch_bit(arch->gguf);
	snprintf(out->arch, sizeof(out->arch), "%s", arch->gguf);
	out->mix = types->mix;
	out->fit = types->fit;
	out->fold = types->fold;
	ret = qf_tf_config_parse(m, &out->cfg);
	if (ret) {
		*why = "config.json: unsupported settings (see the log)";
		return ret;
	}
	if ((arch->flags & QF_ARCH_MOE) && (ret = moe_check(&b, why)) != 0)
		return ret;
	ret = plan_tensors(&b, why);
	if (!ret)
		ret = write_header(m, out, why);
	free(b.used);
	if (ret && !*why)
		*why = qf_strerror(ret);
	return ret;
}

void qf_gguf_plan_free(struct qf_gguf_plan *p)
{
	if (!p)
		return;
	qf_buf_release(&p->header);
	free(p->t);
	free(p->xsrc);
	p->xsrc = NULL;
	p->t = NULL;
	p->nt = 0;
}

/* ------------------------------------------------------------------ */
/* production                                                         */

#define ROW_BLOCK_FLOATS (1u << 20)	/* ~4 MiB of f32 per read */

/* rope_freqs as conversion/llama.py generate_extra_tensors (llama3). */
static void rope_freqs(const struct qf_tf_config *c, float *out)
{
	double lo_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
	double hi_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
	int i, dim = c->head_dim;

	for (i = 0; i < dim / 2; i++) {
		double freq = 1.0 / pow(c->rope_theta, 2.0 * i / dim);
		double wl = 2 * M_PI / freq;
		double s = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor)
			   / (c->rope_high_freq_factor -
			      c->rope_low_freq_factor);

		out[i] = wl < hi_wl ? 1.0f : wl > lo_wl ? c->rope_factor :
			 (float)(1 / ((1 - s) / c->rope_factor + s));
	}
}

/* The values of a vector add_rope_vector() planned. */
static void rope_vector(const struct qf_tf_config *c, const char *name,
			float *out)
{
	if (!strcmp(name, "rope_freqs.weight"))
		rope_freqs(c, out);
	else
		memcpy(out, strstr(name, "long") ? c->rope_long : c->rope_short,
		       (size_t)c->rope_nfac * sizeof(*out));
}

void qf_gguf_permute_rows(const float *src, float *dst, int64_t nr,
			  int64_t cols, int64_t hd, bool inverse)
{
	int64_t h, i, j, a, b;

	for (h = 0; h < nr; h += hd)
		for (i = 0; i < hd / 2; i++)
			for (j = 0; j < 2; j++) {
				a = h + 2 * i + j;	/* llama.cpp's row */
				b = h + j * hd / 2 + i;	/* HF's row */
				memcpy(dst + (inverse ? b : a) * cols,
				       src + (inverse ? a : b) * cols,
				       (size_t)cols * sizeof(*dst));
			}
}

/* Rows [r0, r0 + nr) of x [nr, cols] scaled by fold (1-D: elements). */
static void fold_rows(const struct qf_gguf_fold *fold, float *x, int64_t r0,
		      int64_t nr, int64_t cols)
{
	int64_t r, j;

	for (r = 0; fold && r < nr; r++) {
		float *xr = x + r * cols;

		for (j = 0; fold->col && j < cols; j++)
			xr[j] *= fold->col[j];
		for (j = 0; fold->row && j < cols; j++)
			xr[j] /= fold->row[r0 + r];
	}
}

/* t's rows [lo, hi) (hi 0: all) from src (one expert's of a 3-D t)
 * into dst (at their place). */
static int produce_rows(const struct qf_gguf_tensor *t,
			const struct qf_model_tensor *src, const float *imp,
			const float *u, bool fit, int64_t lo, int64_t hi,
			const struct qf_gguf_fold *fold, uint8_t *dst)
{
	int64_t rows, cols, rb, r0, r, hd;
	uint64_t row_bytes;
	float *buf, *tmp = NULL;
	int ret = 0;

	/* a 1-D tensor is rows of one element, so biases permute alike */
	rows = t->ndim >= 2 ? t->ne[1] : t->ne[0];
	cols = t->ndim >= 2 ? t->ne[0] : 1;
	hd = t->permute_heads ? rows / t->permute_heads : 1;
	rb = (int64_t)ROW_BLOCK_FLOATS / cols;
	rb = rb < hd ? hd : rb / hd * hd;
	if (t->ndim == 1)
		rb = rows;
	buf = malloc((size_t)(rb * cols) * sizeof(*buf));
	if (t->permute_heads)
		tmp = malloc((size_t)(rb * cols) * sizeof(*tmp));
	if (!buf || (t->permute_heads && !tmp)) {
		ret = -ENOMEM;
		goto out_free;
	}
	row_bytes = qf_ggml_row_bytes(t->type, t->ne[0]);
	for (r0 = lo, hi = hi ? hi : rows; r0 < hi && !ret; r0 += rb) {
		int64_t nr = hi - r0 < rb ? hi - r0 : rb;
		float *x = buf;

		ret = t->ndim >= 2 ?
		      qf_model_read_f32_rows(src, r0, nr, buf) :
		      qf_model_read_f32(src, buf);
		if (ret)
			break;
		if (t->ndim >= 2)	/* source rows: before permuting */
			fold_rows(fold, buf, r0, nr, cols);
		if (t->permute_heads) {
			qf_gguf_permute_rows(buf, tmp, nr, cols, hd, false);
			x = tmp;
		}
		if (t->ndim == 1) {
			for (r = 0; r < rows; r++)
				x[r] += t->shift;
			fold_rows(fold, x, 0, rows, 1);
			ret = qf_ggml_quantize_row(t->type, x, rows, NULL, dst);
			break;
		}
		if (u) {	/* rows independent: GPTQ block by block */
			ret = qf_ggml_gptq_quantize(t->type, x, nr, cols, u,
						    imp, (uint8_t *)dst +
						    (uint64_t)r0 * row_bytes);
			continue;
		}
		for (r = 0; r < nr && !ret; r++)
			ret = (fit ? qf_ggml_quantize_row_fit :
			       qf_ggml_quantize_row)(t->type, x + r * cols,
						     cols, imp, (uint8_t *)dst +
						     (uint64_t)(r0 + r) *
						     row_bytes);
	}
out_free:
	free(buf);
	free(tmp);
	return ret;
}

int qf_gguf_produce(const struct qf_model *m, const struct qf_gguf_plan *p,
		    size_t i, const float *imp, void *dst)
{
	return qf_gguf_produce_gptq(m, p, i, 0, 0, imp, NULL, NULL, dst);
}

int qf_gguf_produce_gptq(const struct qf_model *m,
			 const struct qf_gguf_plan *p, size_t i, int64_t r0,
			 int64_t r1, const float *imp, const float *u,
			 const struct qf_gguf_fold *fold, void *dst)
{
	const struct qf_gguf_tensor *t;
	uint64_t mat;
	float *buf;
	int64_t e;
	int ret = 0;

	if (i >= p->nt)
		return -EINVAL;
	t = &p->t[i];
	if (r0 < 0 || r1 < 0 || (r1 && (t->ndim != 2 || r1 > t->ne[1] ||
					r0 >= r1)) || (!r1 && r0))
		return -EINVAL;		/* not rows of a 2-D tensor */
	if (!t->src) {
		buf = malloc((size_t)t->ne[0] * sizeof(*buf));
		if (!buf)
			return -ENOMEM;
		rope_vector(&p->cfg, t->name, buf);
		ret = qf_ggml_quantize_row(t->type, buf, t->ne[0], NULL, dst);
		free(buf);
		return ret;
	}
	if (u && (t->ndim != 2 || !qf_ggml_gptq_known(t->type)))
		u = NULL;	/* no GPTQ encoder of that type */
	if (t->ndim < 3)
		return produce_rows(t, t->src, imp, u, p->fit, r0, r1, fold,
				    dst);
	mat = qf_ggml_row_bytes(t->type, t->ne[0]) * (uint64_t)t->ne[1];
	for (e = 0; e < t->ne[2] && !ret; e++)	/* expert by expert */
		ret = produce_rows(t, t->xsrc[e], imp ? imp + e * t->ne[0] :
				   NULL, NULL, p->fit, 0, 0, NULL, (uint8_t *)dst +
				   (uint64_t)e * mat);
	return ret;
}
