/*
 * variant.c - what a variant of a model consists of, and producing it.
 *
 * qf_variant_init() decides, from shapes alone, every output tensor with
 * its exact size, so the file assembler can publish the file size before
 * anything is quantized.  qf_variant_produce() computes one production
 * group (one source linear): GPTQ checkpoint tensors, or for _fake the
 * dequantized weight in the source dtype.
 *
 * Which tensors are quantized: 2-D floating ".weight" tensors except
 * embeddings, lm_head and norms.  A linear whose shape the packing cannot
 * express (e.g. 3 bits needs both dims divisible by 32) stays in the
 * source dtype, is listed in quantization.json and is excluded in the
 * config with a GPTQModel/vLLM "dynamic" negative override.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"
#include "variant.h"

static bool is_float(enum qf_dtype dt)
{
	return dt == QF_DT_F16 || dt == QF_DT_BF16 || dt == QF_DT_F32;
}

/* A 2-D linear weight that quantization applies to. */
static bool is_linear(const struct qf_model_tensor *mt)
{
	const char *n = mt->name;
	size_t len = strlen(n);

	return mt->t->ndim == 2 && is_float(mt->t->dtype) && len > 7 &&
	       !strcmp(n + len - 7, ".weight") && !strstr(n, "embed") &&
	       !strstr(n, "lm_head") && !strstr(n, "norm") &&
	       !strstr(n, "wte") && !strstr(n, "wpe");
}

uint64_t qf_vtensor_bytes(const struct qf_vtensor *t)
{
	uint64_t n = qf_dtype_size(t->dtype);
	int i;

	for (i = 0; i < t->ndim; i++)
		n *= (uint64_t)t->shape[i];
	return n;
}

static int add_tensor(struct qf_variant *v, size_t *cap, const char *prefix,
		      const char *suffix, enum qf_dtype dt, int64_t d0,
		      int64_t d1, uint32_t group)
{
	struct qf_buf b = QF_BUF_INIT;
	struct qf_vtensor *t;

	if (qf_grow(&v->t, v->nt + 1, cap, 64, sizeof(*v->t)))
		return -ENOMEM;
	if (qf_buf_addf(&b, "%s%s", prefix, suffix) < 0)
		return -ENOMEM;
	t = &v->t[v->nt++];
	memset(t, 0, sizeof(*t));
	t->name = qf_buf_detach(&b, NULL);
	t->dtype = dt;
	t->ndim = d1 < 0 ? 1 : 2;
	t->shape[0] = d0;
	t->shape[1] = d1 < 0 ? 0 : d1;
	t->group = group;
	return 0;
}

static int note_skip(struct qf_variant *v, const char *name,
		     const char *reason)
{
	cJSON *o = cJSON_CreateObject();
	char *s;
	int ret;

	if (!o)
		return -ENOMEM;
	cJSON_AddStringToObject(o, "name", name);
	cJSON_AddStringToObject(o, "reason", reason);
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		return -ENOMEM;
	ret = qf_buf_addf(&v->skipped, "%s%s", v->nskipped ? "," : "", s);
	free(s);
	v->nskipped++;
	return ret;
}

/* The spec's group size: 0 per channel, else the _g part (128). */
static int spec_group(const struct qf_spec *s)
{
	return s->group < 0 ? 0 : s->group ? s->group : 128;
}

/* Grid bits of a linear: 2..8, or 16 (kept in the source dtype); its
 * group size into *group. */
static int linear_bits(const struct qf_variant *v, const char *name,
		       int *group)
{
	const struct qf_spec *s = &v->spec;

	*group = spec_group(s);
	if (v->bits_of)
		return v->bits_of(v->bits_arg, name, group);
	if (s->attn_bits && strstr(name, "self_attn."))
		return s->attn_bits;	/* _attn<a>, brecq */
	if (s->method == QF_METHOD_BRECQ)
		return s->bits;
	if (s->method == QF_METHOD_MIXED_STATIC) {
		struct qf_mixed_static t;

		qf_mixed_static_defaults(&t);
		return qf_mixed_static_bits(&t, NULL, name, NULL);
	}
	return s->bits;
}

static bool packable(const struct qf_spec *s, int bits, int64_t in,
		     int64_t out)
{
	if (s->method == QF_METHOD_AWQ)
		return qf_awq_packable(bits, in, out, s->group < 0 ? 0 :
				       s->group);
	return qf_gptq_packable(qf_pack_bits(bits), in, out);
}

static bool head_source(const struct qf_variant *v,
			const struct qf_model_tensor *mt);

/*
 * awq_w4_g<g>_head4: the head's input scales fold into model.norm (gemma:
 * (1 + w) / s - 1), an output of the head's group, when the head (or a
 * tied source's embedding) packs.  The norm tensor, or NULL.
 */
static const struct qf_model_tensor *awq_head_norm(const struct qf_variant *v)
{
	const struct qf_model_tensor *h = qf_model_find(v->m, "lm_head.weight");
	const struct qf_model_tensor *nt = qf_model_find(v->m,
							 "model.norm.weight");

	if (v->spec.method != QF_METHOD_AWQ || !v->spec.head_bits)
		return NULL;
	if (!h)
		h = qf_model_find(v->m, "model.embed_tokens.weight");
	if (!h || !nt || !head_source(v, h) || nt->t->ndim != 1 ||
	    !is_float(nt->t->dtype) || nt->t->shape[0] != h->t->shape[1] ||
	    !packable(&v->spec, v->spec.head_bits, h->t->shape[1],
		      h->t->shape[0]))
		return NULL;
	return nt;
}

/*
 * AWQ folds the input scales of q/k/v into input_layernorm and those of
 * gate/up into post_attention_layernorm (gemma: pre_feedforward_layernorm,
 * stored as (1 + w) / s - 1, layer.c), so that norm becomes an output
 * of the q_proj (gate_proj) group, when every linear that reads it is
 * quantized.  name is a linear or a norm of decoder layer L; the norm
 * tensor, or NULL when nothing is folded.
 */
static const struct qf_model_tensor *awq_norm(const struct qf_variant *v,
					      const char *name)
{
	static const struct {
		const char *norm;
		const char *owner;
		const char *lin[3];
	} fold[] = {
		{ "input_layernorm", "self_attn.q_proj",
		  { "self_attn.q_proj", "self_attn.k_proj",
		    "self_attn.v_proj" } },
		{ "post_attention_layernorm", "mlp.gate_proj",
		  { "mlp.gate_proj", "mlp.up_proj", NULL } },
		/* phi3: the fused tensors read them */
		{ "input_layernorm", "self_attn.qkv_proj",
		  { "self_attn.qkv_proj", NULL, NULL } },
		{ "post_attention_layernorm", "mlp.gate_up_proj",
		  { "mlp.gate_up_proj", NULL, NULL } },
	};
	const char *p = strstr(name, "model.layers.");
	const cJSON *mty = cJSON_GetObjectItemCaseSensitive(v->m->config,
							    "model_type");
	const struct qf_arch *a = cJSON_IsString(mty) ?
				  qf_arch_find(mty->valuestring) : NULL;
	const struct qf_model_tensor *mt;
	char want[256];
	size_t f, k;
	int l;

	if (v->spec.head_bits && (!strcmp(name, "model.norm.weight") ||
				  !strcmp(name, "lm_head.weight") ||
				  !strcmp(name, "model.embed_tokens.weight")))
		return awq_head_norm(v);
	if (v->spec.method != QF_METHOD_AWQ || p != name ||
	    sscanf(name, "model.layers.%d.", &l) != 1)
		return NULL;
	for (f = 0; f < sizeof(fold) / sizeof(fold[0]); f++) {
		char norm[128], owner[128];

		/* gemma's MLP reads its own pre_feedforward_layernorm */
		snprintf(norm, sizeof(norm), "model.layers.%d.%s.weight", l,
			 f == 1 && a && (a->flags & QF_ARCH_GEMMA) ?
			 "pre_feedforward_layernorm" : fold[f].norm);
		snprintf(owner, sizeof(owner), "model.layers.%d.%s.weight", l,
			 fold[f].owner);
		if ((strcmp(name, norm) && strcmp(name, owner)) ||
		    !qf_model_find(v->m, owner))
			continue;	/* another family's layout */
		for (k = 0; k < 3 && fold[f].lin[k]; k++) {
			snprintf(want, sizeof(want), "model.layers.%d.%s.weight",
				 l, fold[f].lin[k]);
			mt = qf_model_find(v->m, want);
			if (!mt || !is_linear(mt) ||
			    !packable(&v->spec, v->spec.bits, mt->t->shape[1],
				      mt->t->shape[0]))
				return NULL;
		}
		mt = qf_model_find(v->m, norm);
		return mt && mt->t->ndim == 1 && is_float(mt->t->dtype) ? mt :
		       NULL;
	}
	return NULL;
}

/*
 * AWQ of a MoE block (layer_moe.c): one input scale vector for every
 * expert's gate/up folds into post_attention_layernorm and into the
 * columns of the router (and of Qwen2-MoE's shared expert gate), which
 * stay in the source dtype but change: they become the last output
 * tensors of expert 0's gate, up and down groups.  name is one of those
 * linears or those tensors; the tensor, or NULL (no AWQ, no sparse
 * layer, or some expert linear the format cannot pack).
 */
static const struct qf_model_tensor *awq_moe_extra(const struct qf_variant *v,
						   const char *name)
{
	const cJSON *mty = cJSON_GetObjectItemCaseSensitive(v->m->config,
							    "model_type");
	const struct qf_arch *a = cJSON_IsString(mty) ?
				  qf_arch_find(mty->valuestring) : NULL;
	const struct qf_model_tensor *mt, *x[QF_MOE_NLINEAR];
	char want[256], own[QF_MOE_NLINEAR][256];
	struct qf_tf_config c;
	int l, e, k;

	if (v->spec.method != QF_METHOD_AWQ || !a ||
	    !(a->flags & QF_ARCH_MOE) || strncmp(name, "model.layers.", 13) ||
	    sscanf(name + 13, "%d.", &l) != 1 ||
	    qf_tf_config_parse(v->m, &c) < 0 || !c.moe || l >= c.layers ||
	    !qf_moe_layer_sparse(&c, l))
		return NULL;
	for (e = 0; e < c.experts + (c.shared_inter > 0); e++)
		for (k = 0; k < QF_MOE_NLINEAR; k++) {
			qf_moe_expert_name(&c, l, e, k, want, sizeof(want) - 8);
			strcat(want, ".weight");
			if (e == 0)
				strcpy(own[k], want);
			mt = qf_model_find(v->m, want);
			if (!mt || !is_linear(mt) ||
			    !packable(&v->spec, v->spec.bits, mt->t->shape[1],
				      mt->t->shape[0]))
				return NULL;
		}
	snprintf(want, sizeof(want),
		 "model.layers.%d.post_attention_layernorm.weight", l);
	x[0] = qf_model_find(v->m, want);
	qf_moe_router_name(&c, l, want, sizeof(want) - 8);
	strcat(want, ".weight");
	x[1] = qf_model_find(v->m, want);
	snprintf(want, sizeof(want), "model.layers.%d.%s.weight", l,
		 c.moe->shared_gate ? c.moe->shared_gate : "");
	x[2] = c.moe->shared_gate ? qf_model_find(v->m, want) : NULL;
	if (!x[0] || !x[1] || (c.moe->shared_gate && !x[2]))
		return NULL;
	for (k = 0; k < QF_MOE_NLINEAR; k++)
		if (x[k] && is_float(x[k]->t->dtype) &&
		    (!strcmp(name, own[k]) || !strcmp(name, x[k]->name)))
			return x[k];
	return NULL;
}

/* Output tensors of one quantized linear; prefix is name minus .weight. */
static int add_linear(struct qf_variant *v, size_t *cap, size_t *gcap,
		      const struct qf_model_tensor *mt, const char *as,
		      int bits, int group)
{
	int64_t out = mt->t->shape[0];
	int64_t in = mt->t->shape[1];
	const struct qf_spec *s = &v->spec;
	struct qf_vgroup *g;
	char prefix[4096];
	uint32_t gi = (uint32_t)v->ng;
	int64_t ng;
	int ret;

	snprintf(prefix, sizeof(prefix), "%.*s", as ? (int)strlen(as) :
		 (int)(strlen(mt->name) - 7), as ? as : mt->name);
	if (qf_grow(&v->g, v->ng + 1, gcap, 32, sizeof(*v->g)))
		return -ENOMEM;
	g = &v->g[v->ng++];
	memset(g, 0, sizeof(*g));
	g->w = mt;
	g->first = (uint32_t)v->nt;
	g->qp.bits = bits;
	g->pack_bits = qf_pack_bits(g->qp.bits);
	g->qp.group = group;
	g->qp.sym = s->flags & QF_SPEC_SYM;
	g->src_bytes = mt->t->nbytes;
	ng = qf_ngroups(in, g->qp.group);
	if (s->flags & QF_SPEC_FAKE) {
		ret = add_tensor(v, cap, prefix, ".weight", mt->t->dtype, out,
				 in, gi);
	} else if (s->method == QF_METHOD_AWQ) {
		/* AutoAWQ GEMM: packed along the output dimension */
		ret = add_tensor(v, cap, prefix, ".qweight", QF_DT_I32, in,
				 out / 8, gi);
		if (!ret)
			ret = add_tensor(v, cap, prefix, ".qzeros", QF_DT_I32,
					 ng, out / 8, gi);
		if (!ret)
			ret = add_tensor(v, cap, prefix, ".scales", QF_DT_F16,
					 ng, out, gi);
	} else {
		ret = add_tensor(v, cap, prefix, ".qweight", QF_DT_I32,
				 in * g->pack_bits / 32, out, gi);
		if (!ret)
			ret = add_tensor(v, cap, prefix, ".qzeros", QF_DT_I32,
					 ng, out * g->pack_bits / 32, gi);
		if (!ret)
			ret = add_tensor(v, cap, prefix, ".scales", QF_DT_F16,
					 ng, out, gi);
		if (!ret)
			ret = add_tensor(v, cap, prefix, ".g_idx", QF_DT_I32,
					 in, -1, gi);
	}
	g->norm = awq_norm(v, mt->name);
	if (!g->norm)
		g->norm = awq_moe_extra(v, mt->name);
	if (!ret && g->norm)
		ret = add_tensor(v, cap, g->norm->name, "", g->norm->t->dtype,
				 g->norm->t->shape[0], g->norm->t->ndim == 2 ?
				 g->norm->t->shape[1] : -1, gi);
	g->n = (uint32_t)(v->nt - g->first);
	return ret;
}

/*
 * _head<h> (rtn, gptq, awq, brecq; the grammar refuses it elsewhere):
 * mt is the head's source, lm_head.weight, or with tied embeddings (no
 * lm_head.weight) model.embed_tokens.weight.
 */
static bool head_source(const struct qf_variant *v,
			const struct qf_model_tensor *mt)
{
	int h = v->spec.head_bits;

	if (h < 2 || h > 8 || v->spec.method == QF_METHOD_KQUANT ||
	    mt->t->ndim != 2 || !is_float(mt->t->dtype))
		return false;
	if (!strcmp(mt->name, "lm_head.weight"))
		return true;
	return !strcmp(mt->name, "model.embed_tokens.weight") &&
	       !qf_model_find(v->m, "lm_head.weight");
}

/* The quantized lm_head's group (v->head): 0, or 1 and a note why it is
 * kept (then its source is served as it is), or -ENOMEM. */
static int add_head(struct qf_variant *v, size_t *cap, size_t *gcap,
		    const struct qf_model_tensor *mt)
{
	int bits = v->spec.head_bits;
	int ret;

	if (!packable(&v->spec, bits, mt->t->shape[1], mt->t->shape[0])) {
		ret = note_skip(v, "lm_head.weight", "the head's shape does not "
				"pack at its bits");
		return ret < 0 ? ret : 1;
	}
	v->head = (int)v->ng;
	return add_linear(v, cap, gcap, mt, "lm_head", bits,
			  spec_group(&v->spec));
}

int qf_variant_init(struct qf_model *m, const struct qf_spec *spec,
		    struct qf_variant **out)
{
	return qf_variant_init_bits(m, spec, NULL, NULL, out);
}

int qf_variant_init_bits(struct qf_model *m, const struct qf_spec *spec,
			 qf_bits_fn bits_of, void *arg,
			 struct qf_variant **out)
{
	struct qf_variant *v;
	size_t cap = 0, gcap = 0;
	size_t i;
	int ret, bits, group;
	bool router, head;

	switch (spec->method) {
	case QF_METHOD_RTN:
	case QF_METHOD_GPTQ:
	case QF_METHOD_AWQ:
	case QF_METHOD_MIXED_STATIC:
		break;
	case QF_METHOD_BRECQ:
		break;
	case QF_METHOD_MIXED_DYN:
	case QF_METHOD_MIXED_BUDGET:
		if (!bits_of)
			return QF_EUNSUPPORTED;
		break;
	case QF_METHOD_KQUANT:
		if (!qf_spec_kq_supported(spec))
			return QF_EUNSUPPORTED;
		break;
	}
	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->m = m;
	v->spec = *spec;
	v->head = -1;
	v->bits_of = bits_of;
	v->bits_arg = arg;
	ret = qf_spec_print(spec, v->name, sizeof(v->name));
	if (ret < 0)
		goto out_free;
	for (i = 0; i < m->nt; i++) {
		const struct qf_model_tensor *mt = &m->t[i];

		if (awq_norm(v, mt->name) == mt ||
		    awq_moe_extra(v, mt->name) == mt)
			continue;	/* an output of its q/gate group */
		head = head_source(v, mt);
		if (head && (ret = add_head(v, &cap, &gcap, mt)) < 0)
			goto out_free;
		/* the head's group replaces lm_head.weight; a tied source's
		 * embedding is served as well, as it is */
		if (head && !ret && !strcmp(mt->name, "lm_head.weight"))
			continue;
		router = is_linear(mt) && spec->method != QF_METHOD_KQUANT &&
			 qf_moe_is_router(m, mt->name);
		if (router && (ret = note_skip(v, mt->name, "a mixture-of-"
					       "experts router")) < 0)
			goto out_free;
		/* k-quants live in model.gguf only (fs/gguf_view.c) */
		if (head || !is_linear(mt) || router ||
		    spec->method == QF_METHOD_KQUANT) {
			ret = add_tensor(v, &cap, mt->name, "", mt->t->dtype,
					 0, 0, QF_VT_PASSTHROUGH);
			if (ret < 0)
				goto out_free;
			v->t[v->nt - 1].src = mt;
			v->t[v->nt - 1].ndim = mt->t->ndim;
			memcpy(v->t[v->nt - 1].shape, mt->t->shape,
			       sizeof(v->t[v->nt - 1].shape));
			continue;
		}
		bits = linear_bits(v, mt->name, &group);
		if (bits >= 16 ||
		    !packable(spec, bits, mt->t->shape[1], mt->t->shape[0])) {
			ret = note_skip(v, mt->name, bits >= 16 ?
					"kept at 16 bits by the precision "
					"allocation" :
					spec->method == QF_METHOD_AWQ ?
					"the AWQ GEMM format needs 4 bits, out "
					"divisible by 8 and in by the group "
					"size" : bits == 3 ?
					"3-bit packing needs in and out "
					"divisible by 32" :
					"packing needs in and out divisible "
					"by 32 / bits");
			if (!ret)
				ret = add_tensor(v, &cap, mt->name, "",
						 mt->t->dtype, 0, 0,
						 QF_VT_PASSTHROUGH);
			if (ret < 0)
				goto out_free;
			v->t[v->nt - 1].src = mt;
			v->t[v->nt - 1].ndim = 2;
			v->t[v->nt - 1].shape[0] = mt->t->shape[0];
			v->t[v->nt - 1].shape[1] = mt->t->shape[1];
			continue;
		}
		ret = add_linear(v, &cap, &gcap, mt, NULL, bits, group);
		if (ret < 0)
			goto out_free;
	}
	*out = v;
	return 0;

out_free:
	qf_variant_free(v);
	return ret;
}

void qf_variant_free(struct qf_variant *v)
{
	size_t i;

	if (!v)
		return;
	for (i = 0; i < v->nt; i++)
		free(v->t[i].name);
	free(v->t);
	free(v->g);
	qf_buf_release(&v->skipped);
	free(v);
}

/* Dequantize q into dst in the source dtype; returns sum((w - deq)^2). */
static double dequant(const float *w, const uint8_t *q, const uint16_t *sc,
		      const int32_t *zero, int64_t out, int64_t in, int64_t ng,
		      const int32_t *g_idx, enum qf_dtype dt, void *dst)
{
	double err = 0;
	int64_t r, j;

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			int64_t k = r * ng + g_idx[j];
			float d = qf_f16_to_f32(sc[k]) *
				  (float)((int32_t)q[r * in + j] - zero[k]);

			if (dt == QF_DT_BF16) {
				((uint16_t *)dst)[r * in + j] = qf_f32_to_bf16(d);
				d = qf_bf16_to_f32(((uint16_t *)dst)[r * in + j]);
			} else if (dt == QF_DT_F16) {
				((uint16_t *)dst)[r * in + j] = qf_f32_to_f16(d);
				d = qf_f16_to_f32(((uint16_t *)dst)[r * in + j]);
			} else if (dst) {
				((float *)dst)[r * in + j] = d;
			}
			if (w)
				err += ((double)w[r * in + j] - d) *
				       ((double)w[r * in + j] - d);
		}
	return err;
}

/* The GPTQ checkpoint's tensors but qweight: qzeros, scales, g_idx. */
static void emit_rest(const struct qf_vgroup *g, const uint16_t *sc,
		      const int32_t *zero, const int32_t *g_idx, void **out)
{
	int64_t rows = g->w->t->shape[0];
	int64_t in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group);
	int64_t r, j;

	qf_gptq_pack_qzeros(zero, rows, ng, g->pack_bits, out[1]);
	/* scales are [groups, out]: transpose from [out, groups] */
	for (r = 0; r < rows; r++)
		for (j = 0; j < ng; j++)
			((uint16_t *)out[2])[j * rows + r] = sc[r * ng + j];
	memcpy(out[3], g_idx, (size_t)in * sizeof(*g_idx));
}

void qf_variant_emit(const struct qf_variant *v, size_t gi, const uint8_t *q,
		     const uint16_t *sc, const int32_t *zero,
		     const int32_t *g_idx, void **out)
{
	const struct qf_vgroup *g = &v->g[gi];
	int64_t rows = g->w->t->shape[0];
	int64_t in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group);

	if (v->spec.flags & QF_SPEC_FAKE) {
		dequant(NULL, q, sc, zero, rows, in, ng, g_idx, g->w->t->dtype,
			out[0]);
		return;
	}
	if (v->spec.method == QF_METHOD_AWQ) {
		qf_awq_pack(q, sc, zero, rows, in, ng, out[0], out[1],
			    out[2]);
		return;
	}
	qf_gptq_pack_qweight(q, rows, in, g->pack_bits, out[0]);
	emit_rest(g, sc, zero, g_idx, out);
}

/*
 * One thread's share of a group: rows [r0, r1) read in blocks of a few
 * rows (they stay in cache between conversion and rounding), quantized,
 * and, with qweight set, packed into it at once: the codes of a block
 * live in a block's buffer instead of one of the group's size (a byte
 * per weight, fresh pages for every group: page faults were a quarter of
 * a first read's production).
 */
struct rows_job {
	const struct qf_variant *v;
	const struct qf_vgroup *g;
	int64_t r0, r1;
	uint8_t *q;			/* [out, in], or NULL: */
	uint32_t *qweight;		/* packed as made */
	uint16_t *sc;			/* [out, ngroups] */
	int32_t *zero;			/* [out, ngroups] */
	int ret;
};

#define ROW_BLOCK 8
#define PACK_BYTES (128u << 10)	/* codes packed at once, at most */

static void *rows_run(void *arg)
{
	struct rows_job *j = arg;
	int64_t rows = j->g->w->t->shape[0];
	int64_t in = j->g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, j->g->qp.group);
	/* rows packed at once: whole cache lines of qweight's rows */
	int64_t pr = (int64_t)PACK_BYTES / in / ROW_BLOCK * ROW_BLOCK;
	float *buf = malloc((size_t)(ROW_BLOCK * in) * sizeof(*buf));
	uint8_t *qb;
	int64_t r, p0 = j->r0;

	pr = pr < ROW_BLOCK ? ROW_BLOCK : pr;
	qb = j->q ? NULL : malloc((size_t)(pr * in));
	j->ret = buf && (j->q || qb) ? 0 : -ENOMEM;
	for (r = j->r0; r < j->r1 && !j->ret; r += ROW_BLOCK) {
		int64_t nr = j->r1 - r < ROW_BLOCK ? j->r1 - r : ROW_BLOCK;
		uint8_t *q = qb ? qb + (r - p0) * in : j->q + r * in;

		j->ret = qf_model_read_f32_rows(j->g->w, r, nr, buf);
		if (j->ret)
			break;
		j->ret = qf_rtn_quantize(buf, nr, in, &j->g->qp, q,
					 j->sc + r * ng, j->zero + r * ng);
		if (j->ret)
			qf_err("%s: %s: a scale is out of the fp16 range",
			       j->v->name, j->g->w->name);
		else if (qb && (r + nr - p0 == pr || r + nr == j->r1)) {
			qf_gptq_pack_qweight_rows(qb, p0, r + nr - p0, rows,
						  in, j->g->pack_bits,
						  j->qweight);
			p0 = r + nr;
		}
	}
	free(qb);
	free(buf);
	return NULL;
}

static __thread int max_threads = 2;	/* qf_variant_threads() */

void qf_variant_threads(int n)
{
	max_threads = n < 2 ? 1 : 2;
}

/*
 * Split rows over up to two threads for large groups: codes into q, or,
 * q NULL, packed into qweight.
 */
static int quantize_rows(const struct qf_variant *v, const struct qf_vgroup *g,
			 uint8_t *q, uint32_t *qweight, uint16_t *sc,
			 int32_t *zero)
{
	int64_t rows = g->w->t->shape[0];
	int64_t half = max_threads > 1 && rows >= 64 &&
		       qf_st_numel(g->w->t) >= (1 << 20) ?
		       rows / 2 / ROW_BLOCK * ROW_BLOCK : rows;
	struct rows_job jobs[2] = {
		{ v, g, 0, half, q, qweight, sc, zero, 0 },
		{ v, g, half, rows, q, qweight, sc, zero, 0 },
	};
	pthread_t th;
	bool two = half < rows && pthread_create(&th, NULL, rows_run,
						 &jobs[1]) == 0;

	rows_run(&jobs[0]);
	if (two)
		pthread_join(th, NULL);
	else if (half < rows)
		rows_run(&jobs[1]);
	if (jobs[0].ret < 0)
		return jobs[0].ret;
	return jobs[1].ret;
}

int qf_variant_produce(const struct qf_variant *v, size_t gi, void **out,
		       double *err_rel)
{
	const struct qf_vgroup *g = &v->g[gi];
	int64_t rows = g->w->t->shape[0];
	int64_t in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group);
	int64_t gs = ng == 1 ? in : g->qp.group;
	uint16_t *sc = NULL;
	int32_t *zero = NULL, *g_idx = NULL;
	uint8_t *q = NULL;
	float *w = NULL;
	double err, norm = 0;
	int64_t j;
	int ret;
	/* the GPTQ checkpoint is packed as made: no codes kept */
	bool packed = !(v->spec.flags & QF_SPEC_FAKE) &&
		      v->spec.method != QF_METHOD_AWQ && !err_rel;

	q = packed ? NULL : malloc((size_t)(rows * in));
	sc = malloc((size_t)(rows * ng) * sizeof(*sc));
	zero = malloc((size_t)(rows * ng) * sizeof(*zero));
	g_idx = malloc((size_t)in * sizeof(*g_idx));
	if (err_rel)
		w = malloc((size_t)(rows * in) * sizeof(*w));
	if ((!packed && !q) || !sc || !zero || !g_idx || (err_rel && !w)) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (j = 0; j < in; j++)
		g_idx[j] = (int32_t)(j / gs);
	ret = quantize_rows(v, g, q, packed ? out[0] : NULL, sc, zero);
	if (ret < 0)
		goto out_free;
	if (packed)
		emit_rest(g, sc, zero, g_idx, out);
	else
		qf_variant_emit(v, gi, q, sc, zero, g_idx, out);
	if (err_rel) {
		ret = qf_model_read_f32(g->w, w);
		if (ret < 0)
			goto out_free;
		err = dequant(w, q, sc, zero, rows, in, ng, g_idx, QF_DT_F32,
			      NULL);
		for (j = 0; j < rows * in; j++)
			norm += (double)w[j] * w[j];
		*err_rel = norm > 0 ? err / norm : 0;
	}
	ret = 0;
out_free:
	free(w);
	free(q);
	free(sc);
	free(zero);
	free(g_idx);
	return ret;
}
