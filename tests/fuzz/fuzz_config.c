/*
 * fuzz_config.c - fuzz what reads a model's config.json: the object
 * check of qf_model_open() (quant/io/model.c), qf_model_cfg_int(),
 * qf_tf_config_parse() (quant/io/config.c) and the GGUF plan's use of it
 * (quant/gguf/gguf.c; the model has no tensors, so a plan stops at the first
 * one it looks for), and the config.json a variant serves, the source's
 * re-emitted (quant/variant/variant_json.c).
 *
 * A parsed configuration must hold what the forward pass relies on:
 * positive dimensions in their bounds, heads a multiple of kv_heads, an
 * even head_dim, finite positive rope parameters.  A variant's config
 * must be a JSON object without the source's quantization_config (a
 * _fake variant has none).  A libFuzzer target
 * (-Dfuzz=true); otherwise linked with fuzz_main.c, which replays
 * corpus/config/.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "variant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_config(const struct qf_tf_config *c)
{
	QF_ASSERT(c->arch && qf_arch_find(c->model_type) == c->arch);
	QF_ASSERT(c->hidden >= 1 && c->hidden <= 1 << 24);
	QF_ASSERT(c->inter >= 1 && c->inter <= 1 << 24);
	QF_ASSERT(c->layers >= 1 && c->layers <= 1 << 16);
	QF_ASSERT(c->heads >= 1 && c->heads <= 1 << 16);
	QF_ASSERT(c->kv_heads >= 1 && c->heads % c->kv_heads == 0);
	QF_ASSERT(c->vocab >= 1 && c->vocab <= 1 << 28);
	QF_ASSERT(c->head_dim >= 2 && c->head_dim % 2 == 0 &&
		  c->head_dim <= 1 << 16);
	QF_ASSERT(c->rms_eps >= 0);
	QF_ASSERT(c->rope_theta > 0);
	QF_ASSERT(c->sliding_window >= 0);
	QF_ASSERT(c->attn_scale >= 0 && c->attn_softcap >= 0 &&
		  c->final_softcap >= 0 && c->rope_linear >= 0);
	QF_ASSERT(!c->window_per_layer || c->layers <= QF_TF_MAX_SLIDE_LAYERS ||
		  !c->sliding_window);
	if (c->rope_factor != 0) {
		QF_ASSERT(c->rope_factor > 0 && c->rope_low_freq_factor > 0);
		QF_ASSERT(c->rope_high_freq_factor > c->rope_low_freq_factor);
		QF_ASSERT(c->rope_orig_max_pos > 0);
	}
}

/* A _fake variant's config.json: the source's, less quantization_config. */
static void check_variant_config(struct qf_model *m)
{
	struct qf_variant v = { .m = m };
	struct qf_buf out = QF_BUF_INIT;
	cJSON *back;

	v.spec.flags = QF_SPEC_FAKE;
	if (qf_variant_config(&v, &out) == 0) {
		back = cJSON_Parse(out.data);
		QF_ASSERT(cJSON_IsObject(back));
		QF_ASSERT(!cJSON_GetObjectItemCaseSensitive(back,
			  "quantization_config"));
		cJSON_Delete(back);
	}
	qf_buf_release(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {
		"max_position_embeddings", "sliding_window", "vocab_size",
		"hidden_size", "bos_token_id", "num_hidden_layers",
	};
	struct qf_model_tensor none = { 0 };
	struct qf_model m = { .dir = (char *)"/fuzz/model", .t = &none };
	struct qf_gguf_types ty;
	struct qf_gguf_plan p;
	struct qf_tf_config c;
	const char *why = NULL;
	size_t i;
	int ret;

	/* as qf_model_open() takes it */
	m.config = cJSON_ParseWithLength((const char *)data, size);
	if (!cJSON_IsObject((cJSON *)m.config)) {
		cJSON_Delete(m.config);
		return 0;
	}
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		long v = qf_model_cfg_int(&m, keys[i], -7);
		cJSON *it = cJSON_GetObjectItemCaseSensitive(m.config,
							     keys[i]);

		QF_ASSERT(v == -7 || (cJSON_IsNumber(it) &&
				      (double)v == it->valuedouble));
	}
	ret = qf_tf_config_parse(&m, &c);
	QF_ASSERT(ret == 0 || ret == QF_EFORMAT || ret == QF_EUNSUPPORTED);
	if (!ret)
		check_config(&c);
	qf_gguf_types_uniform(&ty, QF_GGML_F16);
	ret = qf_gguf_plan_init(&m, &ty, &p, &why);
	QF_ASSERT(ret != 0 && why);	/* no tensors: never a plan */
	qf_gguf_plan_free(&p);
	check_variant_config(&m);
	cJSON_Delete(m.config);
	return 0;
}
