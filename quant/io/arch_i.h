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
#define QF_ARCH_GEMMA_ROWS
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
/* Qwen3-MoE, Mixtral, OLMoE: arch_moe.c */
#define QF_ARCH_MOE_ROWS

#endif /* QF_ARCH_I_H */
