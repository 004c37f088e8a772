/*
 * variant_json.c - the small generated files of a variant directory:
 * config.json (the source's, plus "quantization_config" in the form
 * transformers' GPTQConfig and GPTQModel read) and quantization.json
 * (what was done, to which layers, from which source).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brecq.h"
#include "rot.h"
#include "variant.h"

static int emit(cJSON *root, struct qf_buf *out)
{
	char *s = cJSON_Print(root);
	int ret;

	cJSON_Delete(root);
	if (!s)
		return -ENOMEM;
	qf_buf_reset(out);
	ret = qf_buf_adds(out, s);
	if (!ret)
		ret = qf_buf_adds(out, "\n");
	free(s);
	return ret;
}

/* Escape a tensor prefix as an anchored regular expression. */
static void regex_of(const char *name, struct qf_buf *b)
{
	size_t n = strlen(name) - 7;	/* drop ".weight" */
	size_t i;

	qf_buf_adds(b, "-:^");
	for (i = 0; i < n; i++) {
		if (strchr(".^$*+?()[]{}|\\", name[i]))
			qf_buf_add(b, "\\", 1);
		qf_buf_add(b, &name[i], 1);
	}
	qf_buf_adds(b, "$");
}

/* The layers kept in the source dtype, as a JSON array. */
/*
 * The routers (and shared expert gates) an AWQ MoE variant changed, as
 * module names (no .weight, as transformers matches them) into names
 * (may be NULL); how many.
 */
static int awq_moe_routers(const struct qf_variant *v, cJSON *names)
{
	char mod[256];
	size_t i;
	int n = 0;

	for (i = 0; i < v->ng; i++) {
		const struct qf_model_tensor *t = v->g[i].norm;

		if (!t || t->t->ndim != 2 ||
		    !qf_moe_is_expert(v->m, v->g[i].w->name))
			continue;
		snprintf(mod, sizeof(mod), "%.*s",
			 (int)(strlen(t->name) - strlen(".weight")), t->name);
		if (names)
			cJSON_AddItemToArray(names, cJSON_CreateString(mod));
		n++;
	}
	return n;
}

/*
 * AWQ of a MoE block (layer_moe.c): how, and the source-dtype tensors it
 * changed (the norm, router and shared expert gate its gate/up scales
 * fold into: the last outputs of expert 0's groups); nothing for a
 * dense model.
 */
static void awq_moe_json(const struct qf_variant *v, cJSON *a)
{
	cJSON *ch = NULL;
	size_t i;

	for (i = 0; i < v->ng; i++) {
		const struct qf_vgroup *g = &v->g[i];

		if (!g->norm || !qf_moe_is_expert(v->m, g->w->name))
			continue;
		if (!ch && !(ch = cJSON_AddArrayToObject(a,
				"changed_in_source_dtype")))
			return;
		cJSON_AddItemToArray(ch, cJSON_CreateString(g->norm->name));
	}
	if (ch)
		cJSON_AddStringToObject(a, "moe",
			"one gate/up input scale for every expert (and the "
			"shared expert), searched on the whole MoE block's "
			"output (routing included) over every calibration "
			"token, folded into post_attention_layernorm and into "
			"the columns of the router and the shared expert gate "
			"(router' = router * s: unquantized, in the source "
			"dtype, no longer the source's bytes); per expert a "
			"down -> up_proj scale on the tokens routed to it "
			"(every token when fewer than the linear's input "
			"width)");
}

static cJSON *skipped_list(const struct qf_variant *v)
{
	struct qf_buf arr = QF_BUF_INIT;
	cJSON *o = NULL;

	if (qf_buf_addf(&arr, "[%s]", v->skipped.data ? v->skipped.data : "")
	    == 0)
		o = cJSON_ParseWithLength(arr.data, arr.len);
	qf_buf_release(&arr);
	return o ? o : cJSON_CreateArray();
}

static cJSON *fixed_num(double x);

/* "model.layers.0.mlp.down_proj.weight" -> the module's name, as
 * transformers matches modules_to_not_convert */
static cJSON *module_name(const char *tensor)
{
	size_t n = strlen(tensor);
	char name[512];

	if (n > 7 && !strcmp(tensor + n - 7, ".weight"))
		n -= 7;
	snprintf(name, sizeof(name), "%.*s", (int)n, tensor);
	return cJSON_CreateString(name);
}

/* The config's "bits": the container most linears (by count) use. */
static int config_bits(const struct qf_variant *v)
{
	size_t n[9] = { 0 }, i;
	int b, best = 0;

	if (!v->ng)
		return v->spec.bits;
	for (i = 0; i < v->ng; i++)
		n[v->g[i].pack_bits]++;
	for (b = 2; b <= 8; b++)
		if (n[b] > n[best])
			best = b;
	return best;
}

/* A group's group_size as GPTQ checkpoints write it: -1 per channel. */
static int ckpt_group(const struct qf_vgroup *g)
{
	return g->qp.group > 0 ? g->qp.group : -1;
}

/* The config's group_size: the most common (mixed_b: 32 or 128), the
 * first seen among equals; 128 without groups. */
static int config_group(const struct qf_variant *v)
{
	int val[8], g = 128;
	size_t n[8] = { 0 }, nv = 0, i, k, best = 0;

	for (i = 0; i < v->ng; i++) {
		for (k = 0; k < nv && val[k] != ckpt_group(&v->g[i]); k++)
			;
		if (k == nv && nv == 8)
			continue;	/* no spec has more than two */
		if (k == nv)
			val[nv++] = ckpt_group(&v->g[i]);
		if (++n[k] > best) {
			best = n[k];
			g = val[k];
		}
	}
	return g;
}

static bool mixed_bits(const struct qf_variant *v)
{
	size_t i;

	for (i = 1; i < v->ng; i++)
		if (v->g[i].pack_bits != v->g[0].pack_bits ||
		    v->g[i].qp.group != v->g[0].qp.group)
			return true;
	return false;
}

/*
 * "+:^name$": {"bits": b[, "group_size": g]} for linears off the
 * config's width or group size (GPTQModel's and vLLM's dynamic keys)
 */
static void add_overrides(cJSON *dyn, const struct qf_variant *v)
{
	int def = config_bits(v), defg = config_group(v);
	size_t i;

	for (i = 0; i < v->ng; i++) {
		const struct qf_vgroup *g = &v->g[i];
		struct qf_buf re = QF_BUF_INIT;
		cJSON *o;

		if (g->pack_bits == def && ckpt_group(g) == defg)
			continue;
		regex_of((int)i == v->head ? "lm_head.weight" : g->w->name,
			 &re);
		if (!re.data)
			continue;
		re.data[0] = '+';	/* regex_of writes "-:" */
		o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "bits", g->pack_bits);
		if (ckpt_group(g) != defg)
			cJSON_AddNumberToObject(o, "group_size", ckpt_group(g));
		cJSON_AddItemToObject(dyn, re.data, o);
		qf_buf_release(&re);
	}
}

/*
 * Size accounting that counts every stored byte: packed weights,
 * scales, zeros, g_idx and everything kept in the source dtype, per
 * parameter and against the source and fp32.
 */
static void add_size(cJSON *o, const struct qf_variant *v, uint64_t dst)
{
	uint64_t params = 0, qparams = 0;
	size_t i;

	for (i = 0; i < v->m->nt; i++)
		params += qf_st_numel(v->m->t[i].t);
	for (i = 0; i < v->ng; i++)
		qparams += qf_st_numel(v->g[i].w->t);
	cJSON_AddNumberToObject(o, "parameters", (double)params);
	cJSON_AddNumberToObject(o, "quantized_parameters", (double)qparams);
	cJSON_AddItemToObject(o, "bits_per_parameter",
			      fixed_num(params ? 8.0 * (double)dst /
					(double)params : 0));
	cJSON_AddItemToObject(o, "ratio_vs_source",
			      fixed_num(dst ? (double)v->m->weight_bytes /
					(double)dst : 0));
	cJSON_AddItemToObject(o, "ratio_vs_fp32",
			      fixed_num(dst ? 4.0 * (double)params /
					(double)dst : 0));
}

static cJSON *quant_config(const struct qf_variant *v)
{
	const struct qf_spec *s = &v->spec;
	cJSON *qc = cJSON_CreateObject();
	cJSON *meta;
	cJSON *skipped;
	cJSON *it;
	bool gptq;

	if (s->method == QF_METHOD_AWQ) {
		/* transformers' AwqConfig / AutoAWQ */
		cJSON_AddStringToObject(qc, "quant_method", "awq");
		cJSON_AddNumberToObject(qc, "bits", s->bits);
		cJSON_AddNumberToObject(qc, "group_size", s->group);
		cJSON_AddBoolToObject(qc, "zero_point", true);
		cJSON_AddStringToObject(qc, "version", "gemm");
		skipped = skipped_list(v);
		if (cJSON_GetArraySize(skipped) || awq_moe_routers(v, NULL)) {
			cJSON *names = cJSON_AddArrayToObject(
				qc, "modules_to_not_convert");

			cJSON_ArrayForEach(it, skipped)	/* module names */
				cJSON_AddItemToArray(names, module_name(
					cJSON_GetObjectItem(it, "name")
					->valuestring));
			awq_moe_routers(v, names);
		} else {
			cJSON_AddNullToObject(qc, "modules_to_not_convert");
		}
		cJSON_Delete(skipped);
		if (v->head >= 0)	/* vLLM's awq_marlin: lm_head */
			cJSON_AddBoolToObject(qc, "lm_head", true);
		meta = cJSON_AddObjectToObject(qc, "meta");
		cJSON_AddStringToObject(meta, "quantizer",
					"quantfs " QF_VERSION);
		cJSON_AddStringToObject(meta, "variant", v->name);
		return qc;
	}
	cJSON_AddStringToObject(qc, "quant_method", "gptq");
	cJSON_AddNumberToObject(qc, "bits", config_bits(v));
	/* mixed variants have no _g part: their most common group */
	cJSON_AddNumberToObject(qc, "group_size", s->group ? s->group :
				config_group(v));
	cJSON_AddBoolToObject(qc, "desc_act", qf_spec_act_order(s));
	cJSON_AddBoolToObject(qc, "sym", s->flags & QF_SPEC_SYM);
	cJSON_AddBoolToObject(qc, "static_groups", qf_spec_static_groups(s));
	/* GPTQ's, and the measured mixed variants' (GPTQ at their widths) */
	gptq = s->method == QF_METHOD_GPTQ || qf_spec_mixed_measured(s);
	cJSON_AddBoolToObject(qc, "true_sequential", gptq);
	cJSON_AddStringToObject(qc, "checkpoint_format", "gptq");
	if (gptq)
		cJSON_AddNumberToObject(qc, "damp_percent", 0.01);
	meta = cJSON_AddObjectToObject(qc, "meta");
	cJSON_AddStringToObject(meta, "quantizer", "quantfs " QF_VERSION);
	cJSON_AddStringToObject(meta, "method", qf_method_name(s->method));
	cJSON_AddStringToObject(meta, "variant", v->name);
	if (v->head >= 0)	/* GPTQModel / vLLM: a quantized lm_head */
		cJSON_AddBoolToObject(qc, "lm_head", true);
	if (!v->nskipped && !mixed_bits(v))
		return qc;
	/*
	 * GPTQModel / vLLM per-module overrides: "+:" another bit width,
	 * "-:" not quantized
	 */
	skipped = skipped_list(v);
	meta = cJSON_AddObjectToObject(qc, "dynamic");
	add_overrides(meta, v);
	cJSON_ArrayForEach(it, skipped) {
		struct qf_buf re = QF_BUF_INIT;
		cJSON *n = cJSON_GetObjectItem(it, "name");

		regex_of(n->valuestring, &re);
		if (re.data)
			cJSON_AddItemToObject(meta, re.data,
					      cJSON_CreateObject());
		qf_buf_release(&re);
	}
	cJSON_Delete(skipped);
	return qc;
}

int qf_variant_config(const struct qf_variant *v, struct qf_buf *out)
{
	cJSON *root = cJSON_Duplicate(v->m->config, true);

	if (!root)
		return -ENOMEM;
	/* every one: a source may repeat the key, and a loader takes the
	 * last (a _fake variant must show none) */
	while (cJSON_GetObjectItemCaseSensitive(root, "quantization_config"))
		cJSON_DeleteItemFromObjectCaseSensitive(root,
							"quantization_config");
	/* a quantized head of tied embeddings is its own tensor: untied */
	if (v->head >= 0) {
		cJSON_DeleteItemFromObjectCaseSensitive(root,
							"tie_word_embeddings");
		cJSON_AddBoolToObject(root, "tie_word_embeddings", false);
	}
	if (!(v->spec.flags & QF_SPEC_FAKE) &&
	    v->spec.method != QF_METHOD_KQUANT)	/* GGUF only */
		cJSON_AddItemToObject(root, "quantization_config",
				      quant_config(v));
	return emit(root, out);
}

/* A JSON number of fixed width (12 chars) for results filled in later. */
static cJSON *fixed_num(double x)
{
	char b[32];

	if (!(x >= 1e-99))		/* NaN, negatives, underflow */
		x = 0;
	if (x > 9.999999e+99)
		x = 9.999999e+99;
	snprintf(b, sizeof(b), "%.6e", x);
	return cJSON_CreateRaw(b);
}

/* kq _awq: the scales folded in before the k-quant encoding. */
static void add_kq_awq(cJSON *root)
{
	cJSON *a = cJSON_AddObjectToObject(root, "awq");

	cJSON_AddStringToObject(a, "salience", "mean |x|");
	cJSON_AddNumberToObject(a, "n_grid", 20);
	cJSON_AddStringToObject(a, "scale_groups",
		"q/k/v -> attn_norm, o -> attn_v rows (as many kv heads as "
		"heads, no v bias), gate/up -> ffn_norm, down -> ffn_up rows; "
		"MoE experts, router and output none");
	cJSON_AddStringToObject(a, "objective",
		"sum of the group's linear output errors tr(dW H dW^T), H = "
		"X^T X of the unquantized model, each linear rounded to "
		"nearest on an asymmetric grid of the mix's base bits in "
		"groups of its sub-blocks");
}

static void add_calibration(cJSON *root, const struct qf_variant *v,
			    const struct qf_calib_info *ci)
{
	cJSON *o = cJSON_AddObjectToObject(root, "calibration");

	cJSON_AddStringToObject(o, "source", ci->source);
	cJSON_AddStringToObject(o, "set_key", ci->key);
	cJSON_AddStringToObject(o, "token_hash", ci->hash);
	cJSON_AddNumberToObject(o, "sequences", ci->nseq);
	cJSON_AddNumberToObject(o, "tokens_per_sequence", ci->seqlen);
	cJSON_AddItemToObject(o, "seconds", fixed_num(ci->seconds));
	cJSON_AddStringToObject(o, "backend",
				ci->backend ? ci->backend : "cpu");
	if (v->spec.method == QF_METHOD_AWQ) {
		cJSON *a = cJSON_AddObjectToObject(root, "awq");

		cJSON_AddBoolToObject(o, "true_sequential", false);
		cJSON_AddStringToObject(o, "loss",
			"relative output error |(W - Q) X|^2 / |W X|^2 on the "
			"calibration inputs (awq, with scales folded into the "
			"norm or previous linear) next to round-to-nearest "
			"with the same grid and no scaling (rtn)");
		cJSON_AddStringToObject(a, "salience", v->spec.flags &
					QF_SPEC_L2 ? "sqrt(mean x^2)" :
					"mean |x|");
		cJSON_AddNumberToObject(a, "n_grid", 20);
		cJSON_AddStringToObject(a, "scale_groups",
			"q/k/v -> input_layernorm, gate/up -> "
			"post_attention_layernorm, o -> v_proj (when their "
			"shapes match), down -> up_proj");
		cJSON_AddStringToObject(a, "objective",
			"sum of the group's linear output errors on the "
			"calibration set, via X^T X");
		awq_moe_json(v, a);
		cJSON_AddNumberToObject(a, "clip_grid", 20);
		cJSON_AddNumberToObject(a, "max_shrink", 0.5);
		cJSON_AddStringToObject(a, "clip", "all linears but q/k");
		cJSON_AddStringToObject(a, "rounding",
			"heuristic flips: per row, greedily the flip that "
			"lowers the output error most, while one does");
		if (v->spec.flags & QF_SPEC_REFLIP) {
			cJSON *r = cJSON_AddObjectToObject(a, "reflip");

			cJSON_AddNumberToObject(r, "max_flip_pct", 0.05);
			cJSON_AddNumberToObject(r, "critical_dim_pct", 0.15);
			cJSON_AddNumberToObject(r, "sample_tokens",
						QF_REFLIP_SAMPLE);
			cJSON_AddStringToObject(r, "score_error",
				"sum over query heads of |S' - S|^2 / |S|^2, "
				"S = (X Wq_h^T)(X Wk_g(h)^T)^T before RoPE, "
				"over all pairs of the sample tokens");
		}
		return;
	}
	if (v->spec.method == QF_METHOD_BRECQ) {
		cJSON *b = cJSON_AddObjectToObject(root, "brecq");
		struct qf_brecq_opts d;

		qf_brecq_opts_default(&d);
		cJSON_AddBoolToObject(o, "true_sequential", true);
		cJSON_AddStringToObject(b, "method",
			"block reconstruction (Li et al. 2021): per decoder "
			"block, AdaRound rounding variables learned with Adam "
			"against the full-precision block's output, inputs from "
			"the quantized blocks before");
		cJSON_AddNumberToObject(b, "iters", ci->brecq_iters);
		cJSON_AddNumberToObject(b, "batch_sequences", ci->brecq_batch);
		cJSON_AddNumberToObject(b, "lr", d.lr);
		cJSON_AddNumberToObject(b, "rounding_reg", d.reg);
		cJSON_AddNumberToObject(b, "beta_start", d.beta_hi);
		cJSON_AddNumberToObject(b, "beta_end", d.beta_lo);
		cJSON_AddNumberToObject(b, "warmup", d.warmup);
		cJSON_AddStringToObject(o, "loss",
			"relative block output error mean |B_q(x_q) - B(x)|^2 "
			"/ mean |B(x)|^2 on the calibration set, learned "
			"rounding (brecq) next to round-to-nearest on the same "
			"grid (rtn), the same for every linear of the block");
		return;
	}
	cJSON_AddNumberToObject(o, "damp_percent", ci->damp);
	if (v->spec.method == QF_METHOD_KQUANT) {
		cJSON_AddBoolToObject(o, "true_sequential", false);
		cJSON_AddStringToObject(o, "statistics",
			"the importance matrix (mean x^2 of each input "
			"channel) and each linear's X^T X, of the unquantized "
			"model");
		if (v->spec.flags & QF_SPEC_AWQ)
			add_kq_awq(root);
		return;
	}
	cJSON_AddBoolToObject(o, "true_sequential", true);
	cJSON_AddStringToObject(o, "loss",
				"relative output error |(W - Q) X|^2 / |W X|^2 "
				"on the calibration inputs (gptq) next to "
				"round-to-nearest at the same settings (rtn)");
}

/* _rot: what the quantized model is (rot.h), so it can be made again. */
static void add_rotation(cJSON *root, const struct qf_variant *v)
{
	cJSON *o = cJSON_AddObjectToObject(root, "rotation");
	const cJSON *tie = cJSON_GetObjectItemCaseSensitive(v->m->config,
							    "tie_word_embeddings");

	cJSON_AddStringToObject(o, "construction", QF_ROT_NAME);
	cJSON_AddStringToObject(o, "residual",
				"Q = diag(s) (H_p / sqrt(p) kron DCT-II_m), "
				"hidden = p m, signs s from splitmix64(seed)");
	cJSON_AddStringToObject(o, "value_output",
				"R of head_dim, same construction, seed + 1");
	cJSON_AddNumberToObject(o, "seed", (double)QF_ROT_SEED);
	cJSON_AddStringToObject(o, "norms", "folded into the linears that "
				"read them; stored as ones");
	cJSON_AddBoolToObject(o, "tie_word_embeddings", cJSON_IsTrue(tie));
}

int qf_variant_manifest(const struct qf_variant *v,
			const struct qf_calib_info *ci, struct qf_buf *out)
{
	const struct qf_spec *s = &v->spec;
	uint64_t src = 0, dst = 0;
	cJSON *root = cJSON_CreateObject();
	cJSON *o, *layers, *l, *shape;
	size_t i;

	if (!root)
		return -ENOMEM;
	cJSON_AddNumberToObject(root, "format_version", 1);
	cJSON_AddStringToObject(root, "quantizer", "quantfs " QF_VERSION);
	cJSON_AddStringToObject(root, "variant", v->name);
	cJSON_AddStringToObject(root, "method", qf_method_name(s->method));
	cJSON_AddNumberToObject(root, "bits", s->bits);
	cJSON_AddNumberToObject(root, "group_size", s->group);
	cJSON_AddBoolToObject(root, "sym", s->flags & QF_SPEC_SYM);
	cJSON_AddBoolToObject(root, "fake", s->flags & QF_SPEC_FAKE);
	cJSON_AddStringToObject(root, "output_format", s->flags & QF_SPEC_FAKE ?
				"dequantized, source dtype" :
				s->method == QF_METHOD_AWQ ?
				"AutoAWQ GEMM: qweight/qzeros [in, out/8] int32, "
				"nibble order 0,2,4,6,1,3,5,7, scales [groups, out]" :
				s->method == QF_METHOD_KQUANT ?
				"GGUF model.gguf only: llama.cpp's tensor types "
				"of the mix, dense linears and output GPTQ on "
				"their grids" :
				"gptq checkpoint (v1: qzeros store zero - 1)");
	cJSON_AddStringToObject(root, "grid", s->method == QF_METHOD_KQUANT ?
				"llama.cpp's block grids of each tensor's type" :
				s->method == QF_METHOD_AWQ ?
				"asymmetric over [min(w), max(w)] of the (clipped) group, zero = round(-min/scale) in [0, 15]; scales rounded to fp16 before the weights" :
				s->flags & QF_SPEC_SYM ?
				"symmetric: zero = 2^(bits-1), scale = 2 max|w| / (2^bits - 1)" :
				"asymmetric over [min(w,0), max(w,0)], zero = round(-min/scale) kept >= 1; scales rounded to fp16 before the weights");
	if (ci)
		add_calibration(root, v, ci);
	else
		cJSON_AddNullToObject(root, "calibration");
	if (v->alloc_json)
		cJSON_AddItemToObject(root, "allocation",
				      cJSON_Parse(v->alloc_json));
	if (s->flags & QF_SPEC_ROT)
		add_rotation(root, v);
	o = cJSON_AddObjectToObject(root, "source");
	QF_ASSERT(v->m->fp_set);	/* the caller fingerprinted it */
	cJSON_AddStringToObject(o, "dir", v->m->dir);
	cJSON_AddStringToObject(o, "fingerprint", v->m->fp_hex);
	cJSON_AddStringToObject(o, "dtype", qf_dtype_name(v->m->dtype));
	layers = cJSON_AddArrayToObject(root, "layers");
	for (i = 0; i < v->ng; i++) {
		const struct qf_vgroup *g = &v->g[i];

		l = cJSON_CreateObject();
		cJSON_AddStringToObject(l, "name", (int)i == v->head ?
					"lm_head.weight" : g->w->name);
		shape = cJSON_AddArrayToObject(l, "shape");
		cJSON_AddItemToArray(shape, cJSON_CreateNumber(
					(double)g->w->t->shape[0]));
		cJSON_AddItemToArray(shape, cJSON_CreateNumber(
					(double)g->w->t->shape[1]));
		cJSON_AddNumberToObject(l, "bits", g->qp.bits);
		if (g->pack_bits != g->qp.bits)
			cJSON_AddNumberToObject(l, "container_bits",
						g->pack_bits);
		cJSON_AddNumberToObject(l, "group_size", s->group ? s->group :
					ckpt_group(g));
		if (ci) {
			bool awq = s->method == QF_METHOD_AWQ;

			cJSON_AddItemToObject(l, awq ? "loss_awq" :
				s->method == QF_METHOD_BRECQ ? "loss_brecq" :
				"loss_gptq",
				fixed_num(ci->loss ? ci->loss[i] : 0));
			cJSON_AddItemToObject(l, "loss_rtn", fixed_num(
				ci->loss_rtn ? ci->loss_rtn[i] : 0));
			if (qf_moe_is_expert(v->m, g->w->name))
				cJSON_AddItemToObject(l, "routed_tokens",
					fixed_num(ci->tokens ? ci->tokens[i] :
						  0));
			if (awq)
				cJSON_AddItemToObject(l, "alpha", fixed_num(
					ci->alpha ? ci->alpha[i] : 0));
			if (awq && (s->flags & QF_SPEC_REFLIP) &&
			    strstr(g->w->name, "q_proj")) {
				cJSON_AddItemToObject(l, "score_error_before",
					fixed_num(ci->score ?
						  ci->score[2 * i] : 0));
				cJSON_AddItemToObject(l, "score_error_after",
					fixed_num(ci->score ?
						  ci->score[2 * i + 1] : 0));
			}
		}
		cJSON_AddItemToArray(layers, l);
		src += g->src_bytes;
	}
	cJSON_AddItemToObject(root, "kept_in_source_dtype", skipped_list(v));
	for (i = 0; i < v->nt; i++)
		dst += qf_vtensor_bytes(&v->t[i]);
	o = cJSON_AddObjectToObject(root, "bytes");
	cJSON_AddNumberToObject(o, "source_weights", (double)v->m->weight_bytes);
	cJSON_AddNumberToObject(o, "quantized_source_weights", (double)src);
	cJSON_AddNumberToObject(o, "output_tensors", (double)dst);
	add_size(o, v, dst);
	return emit(root, out);
}
