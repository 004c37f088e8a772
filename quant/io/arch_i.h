/*
 * arch_i.h - private to quant/io: the rows each family file adds to the
 * architecture table (arch.c) and the hooks they implement.  A family
 * file (arch_gemma.c, arch_phi3.c, arch_moe.c) defines its rows' hooks;
 * the row macros below list its entries.
 */
#ifndef QF_ARCH_I_H
#define QF_ARCH_I_H

#include "io.h"

/* Gemma 2 and Gemma 3 (text): arch_gemma.c */
#define GEMMA_LIN                                                            \
	{ "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",        \
	  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",                \
	  "mlp.down_proj" }
#define QF_ARCH_GEMMA_ROWS                                                   \
	{ .model_type = "gemma2", .gguf = "gemma2",                          \
	  .hf_class = "Gemma2ForCausalLM", .lin = GEMMA_LIN,                 \
	  .flags = QF_ARCH_GEMMA, .parse = qf_gemma2_parse,                  \
	  .mk_config = qf_gemma2_mk_config, .mk_layer = qf_gemma2_mk_layer }, \
	{ .model_type = "gemma3_text", .gguf = "gemma3",                     \
	  .hf_class = "Gemma3ForCausalLM", .lin = GEMMA_LIN,                 \
	  .flags = QF_ARCH_GEMMA | QF_ARCH_QK_NORM,                          \
	  .parse = qf_gemma3_parse, .mk_config = qf_gemma3_mk_config,        \
	  .mk_layer = qf_gemma3_mk_layer },
int qf_gemma2_parse(const struct qf_model *m, const struct cJSON *o,
		    struct qf_tf_config *c);
int qf_gemma3_parse(const struct qf_model *m, const struct cJSON *o,
		    struct qf_tf_config *c);
void qf_gemma2_mk_config(struct cJSON *c, const struct qf_mkmodel_opts *o);
void qf_gemma3_mk_config(struct cJSON *c, const struct qf_mkmodel_opts *o);
int qf_gemma2_mk_layer(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
		       int l);
int qf_gemma3_mk_layer(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
		       int l);
/* Phi-3 / Phi-4-mini: arch_phi3.c */
int qf_phi3_parse(const struct qf_model *m, const struct cJSON *o,
		  struct qf_tf_config *c);
void qf_phi3_mk_config(struct cJSON *c, const struct qf_mkmodel_opts *o);
int qf_phi3_mk_layer(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
		     int l);
#define QF_ARCH_PHI3_ROWS                                                    \
	{ .model_type = "phi3", .gguf = "phi3",                              \
	  .hf_class = "Phi3ForCausalLM",                                     \
	  .lin = { "self_attn.qkv_proj", "self_attn.qkv_proj",               \
		   "self_attn.qkv_proj", "self_attn.o_proj",                 \
		   "mlp.gate_up_proj", "mlp.gate_up_proj", "mlp.down_proj" }, \
	  .flags = QF_ARCH_SLIDING | QF_ARCH_LONGROPE,                       \
	  .parse = qf_phi3_parse, .mk_config = qf_phi3_mk_config,            \
	  .mk_layer = qf_phi3_mk_layer },
/* Qwen3-MoE, Mixtral, OLMoE (and Qwen2-MoE): arch_moe.c */
int qf_arch_moe_parse(const struct qf_model *m, const struct cJSON *o,
		      struct qf_tf_config *c);
void qf_arch_moe_mk_config(struct cJSON *c, const struct qf_mkmodel_opts *o);
int qf_arch_moe_mk_layer(struct qf_mk_list *t,
			 const struct qf_mkmodel_opts *o, int l);
#define QF_ARCH_MOE_LIN                                                      \
	{ "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",        \
	  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",                \
	  "mlp.down_proj" }
#define QF_ARCH_MOE_HOOKS                                                    \
	.parse = qf_arch_moe_parse, .mk_config = qf_arch_moe_mk_config,      \
	.mk_layer = qf_arch_moe_mk_layer
#define QF_ARCH_MOE_ROWS                                                     \
	{ .model_type = "qwen3_moe", .gguf = "qwen3moe",                     \
	  .hf_class = "Qwen3MoeForCausalLM", .lin = QF_ARCH_MOE_LIN,         \
	  .flags = QF_ARCH_MOE | QF_ARCH_QK_NORM, QF_ARCH_MOE_HOOKS },        \
	{ .model_type = "mixtral", .gguf = "llama",                          \
	  .hf_class = "MixtralForCausalLM", .lin = QF_ARCH_MOE_LIN,          \
	  .flags = QF_ARCH_MOE | QF_ARCH_GGUF_PERMUTE | QF_ARCH_SLIDING,     \
	  QF_ARCH_MOE_HOOKS },                                               \
	{ .model_type = "olmoe", .gguf = "olmoe",                            \
	  .hf_class = "OlmoeForCausalLM", .lin = QF_ARCH_MOE_LIN,            \
	  .flags = QF_ARCH_MOE | QF_ARCH_QK_NORM_FULL, QF_ARCH_MOE_HOOKS },   \
	{ .model_type = "qwen2_moe", .gguf = "qwen2moe",                     \
	  .hf_class = "Qwen2MoeForCausalLM", .lin = QF_ARCH_MOE_LIN,         \
	  .flags = QF_ARCH_MOE | QF_ARCH_QKV_BIAS, QF_ARCH_MOE_HOOKS },

#endif /* QF_ARCH_I_H */
