/*
 * arch.c - the architectures quantfs computes: one row per config.json
 * model_type, with what differs between families (llama.cpp's name for
 * it, the checkpoint names of a decoder layer's linears and norms, how
 * config.json's extra keys are read and how `quantfs mkmodel --arch`
 * writes one).  Adding a family is a row here and, where its layer
 * computes something new, a flag the kernels test (quant/nn).
 *
 * Models of other types still get the shape-only RTN variants; the log
 * says why nothing else is offered (fs/ns.c).
 */
#include <stdio.h>
#include <string.h>

#include "arch_i.h"

/* The Llama layout every family starts from. */
#define LLAMA_LIN                                                            \
	{ "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",        \
	  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",                \
	  "mlp.down_proj" }

static const struct qf_arch arches[] = {
	{ .model_type = "llama", .gguf = "llama", .hf_class = "LlamaForCausalLM",
	  .lin = LLAMA_LIN, .flags = QF_ARCH_GGUF_PERMUTE },
	{ .model_type = "mistral", .gguf = "llama",
	  .hf_class = "MistralForCausalLM", .lin = LLAMA_LIN,
	  .flags = QF_ARCH_GGUF_PERMUTE | QF_ARCH_SLIDING },
	{ .model_type = "qwen2", .gguf = "qwen2", .hf_class = "Qwen2ForCausalLM",
	  .lin = LLAMA_LIN, .flags = QF_ARCH_QKV_BIAS },
	{ .model_type = "qwen3", .gguf = "qwen3", .hf_class = "Qwen3ForCausalLM",
	  .lin = LLAMA_LIN, .flags = QF_ARCH_QK_NORM },
	QF_ARCH_GEMMA_ROWS
	QF_ARCH_PHI3_ROWS
	QF_ARCH_MOE_ROWS
};

const struct qf_arch *qf_arch_find(const char *model_type)
{
	size_t i;

	for (i = 0; model_type && i < sizeof(arches) / sizeof(arches[0]); i++)
		if (!strcmp(arches[i].model_type, model_type))
			return &arches[i];
	return NULL;
}

void qf_arch_names(char *out, size_t cap)
{
	size_t i, len = 0;

	out[0] = 0;
	for (i = 0; i < sizeof(arches) / sizeof(arches[0]) && len < cap; i++)
		len += (size_t)snprintf(out + len, cap - len, "%s%s",
					i ? ", " : "", arches[i].model_type);
}

const struct qf_arch *qf_arch_at(size_t i)
{
	return i < sizeof(arches) / sizeof(arches[0]) ? &arches[i] : NULL;
}
