/*
 * gguf_mix.c - llama.cpp's k-quant mixes (Q2_K, Q3_K_S/M/L, Q4_K_S/M,
 * Q5_K_S/M, Q6_K): which ggml type each tensor of a kq view gets, so that
 * a kq<bits>_k[_size] view has the tensor types llama-quantize writes for
 * the same mix of the same model (issue #24: quantfs's files are held
 * against llama.cpp's at the same size).  The rules are those of
 * llama_tensor_get_type_impl() in llama.cpp's src/llama-quant.cpp for
 * dense models; the ones for 8-expert models, 70B models and Falcon are
 * not applied (the tests hold the 5M Llama's types against
 * llama-quantize's).
 *
 * A dense model's i_attention_wv and i_ffn_down counters there are the
 * layer index, which the tensor's name gives here.
 *
 * One rule is quantfs's own (ends()): with an untied head, llama.cpp gives
 * token_embd the mix's base type and output Q6_K; quantfs spreads the
 * same bits or fewer over the two vocab x hidden matrices more evenly.
 * On the 5M Llama the embedding's 2-bit error made 40 % of kq2_k's
 * divergence and the head's 6 bits under 1 % of it (README.md, "The
 * embedding and the head").
 */
#include <stdio.h>
#include <string.h>

#include "gguf.h"

int qf_gguf_mix_of(int bits, char size, enum qf_gguf_mix *mix,
		   enum qf_ggml_type *base)
{
	static const struct {
		int bits;
		char size;
		enum qf_gguf_mix mix;
		enum qf_ggml_type base;
	} mixes[] = {
		{ 2, 0, QF_GGUF_MIX_Q2_K, QF_GGML_Q2_K },
		{ 3, 'S', QF_GGUF_MIX_Q3_K_S, QF_GGML_Q3_K },
		{ 3, 'M', QF_GGUF_MIX_Q3_K_M, QF_GGML_Q3_K },
		{ 3, 'L', QF_GGUF_MIX_Q3_K_L, QF_GGML_Q3_K },
		{ 4, 'S', QF_GGUF_MIX_Q4_K_S, QF_GGML_Q4_K },
		{ 4, 'M', QF_GGUF_MIX_Q4_K_M, QF_GGML_Q4_K },
		{ 5, 'S', QF_GGUF_MIX_Q5_K_S, QF_GGML_Q5_K },
		{ 5, 'M', QF_GGUF_MIX_Q5_K_M, QF_GGML_Q5_K },
		/* kiq4_nl, kiq4_xs */
		{ 4, 'N', QF_GGUF_MIX_IQ4_NL, QF_GGML_IQ4_NL },
		{ 4, 'X', QF_GGUF_MIX_IQ4_XS, QF_GGML_IQ4_XS },
		/* all Q6_K: no mix; general.file_type by the types (18, or
		 * Q8_0's 7 where every row falls back) */
		{ 6, 0, QF_GGUF_MIX_NONE, QF_GGML_Q6_K },
	};
	size_t i;

	for (i = 0; i < sizeof(mixes) / sizeof(mixes[0]); i++) {
		if (mixes[i].bits == bits && mixes[i].size == size) {
			*mix = mixes[i].mix;
			*base = mixes[i].base;
			return 0;
		}
	}
	return -EINVAL;
}

/* llama.cpp's use_more_bits(): the layers some mixes give more bits. */
static bool use_more_bits(int i, int n)
{
	return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/*
 * attn_v (v) or ffn_down of layer l of n: the two roles whose rules go by
 * the layer (category_is_attn_v; ffn_down of a non-Falcon model).
 */
static enum qf_ggml_type by_layer(enum qf_gguf_mix mix, bool v, int l, int n,
				  int gqa, enum qf_ggml_type t)
{
	switch (mix) {
	case QF_GGUF_MIX_Q2_K:
		return v && gqa >= 4 ? QF_GGML_Q4_K : QF_GGML_Q3_K;
	case QF_GGUF_MIX_Q3_K_M:
		return (v ? l < 2 : l < n / 16) ? QF_GGML_Q5_K : QF_GGML_Q4_K;
	case QF_GGUF_MIX_Q3_K_L:
		return QF_GGML_Q5_K;
	case QF_GGUF_MIX_Q4_K_M:
	case QF_GGUF_MIX_Q5_K_M:
		return use_more_bits(l, n) ? QF_GGML_Q6_K : t;
	case QF_GGUF_MIX_Q4_K_S:
		return (v ? l < 4 : l < n / 8) ? QF_GGML_Q5_K : t;
	case QF_GGUF_MIX_IQ4_NL:
	case QF_GGUF_MIX_IQ4_XS:
		/* ffn_down: the first eighth Q5_K only without an imatrix,
		 * which these views always have */
		return v && gqa >= 4 ? QF_GGML_Q5_K : t;
	default:
		return t;
	}
}

/*
 * token_embd (embd) or output of an untied model in the mixes that
 * quantfs types otherwise than llama.cpp, bits per weight of the pair:
 * Q2_K: Q2_K + Q6_K (9.19) -> Q4_K + Q4_K (9.0); Q3_K_*: Q3_K + Q6_K (10)
 * -> Q4_K + Q5_K (10); Q4_K_*: Q4_K + Q6_K (11.06) -> Q5_K + Q5_K (11).
 * QF_GGML_F32: llama.cpp's rule (Q5_K_* and Q6_K gained nothing by it).
 * Only where hidden is a multiple of 256.
 */
static enum qf_ggml_type ends(enum qf_gguf_mix mix, bool embd)
{
	switch (mix) {
	case QF_GGUF_MIX_Q2_K:
		return QF_GGML_Q4_K;
	case QF_GGUF_MIX_Q3_K_S:
	case QF_GGUF_MIX_Q3_K_M:
	case QF_GGUF_MIX_Q3_K_L:
		return embd ? QF_GGML_Q4_K : QF_GGML_Q5_K;
	case QF_GGUF_MIX_Q4_K_S:
	case QF_GGUF_MIX_Q4_K_M:
		return QF_GGML_Q5_K;
	default:
		return QF_GGML_F32;
	}
}

bool qf_gguf_mix_ends(enum qf_gguf_mix mix)
{
	return ends(mix, true) != QF_GGML_F32;
}

enum qf_ggml_type qf_gguf_mix_type(enum qf_gguf_mix mix,
				   enum qf_gguf_role role, const char *gg,
				   const struct qf_tf_config *c,
				   enum qf_ggml_type base)
{
	int l = -1;

	/* (rows of whole blocks only: the fallbacks of Q4_K and Q5_K,
	 * Q4_1 and Q8_0, would cost more than llama.cpp's) */
	if (!c->tie && qf_gguf_mix_ends(mix) &&
	    (role == QF_GGUF_ROLE_OUTPUT || role == QF_GGUF_ROLE_EMBD) &&
	    qf_ggml_row_bytes(ends(mix, role == QF_GGUF_ROLE_EMBD), c->hidden))
		return ends(mix, role == QF_GGUF_ROLE_EMBD);
	if (role == QF_GGUF_ROLE_OUTPUT ||
	    (role == QF_GGUF_ROLE_EMBD && c->tie))
		return QF_GGML_Q6_K;	/* (Q8_0 where Q6_K does not fit) */
	if (sscanf(gg, "blk.%d.", &l) != 1 || l < 0)
		return base;
	if (role == QF_GGUF_ROLE_ATTN_V || role == QF_GGUF_ROLE_FFN_DOWN)
		return by_layer(mix, role == QF_GGUF_ROLE_ATTN_V, l, c->layers,
				c->kv_heads > 0 ? c->heads / c->kv_heads : 1,
				base);
	if (role == QF_GGUF_ROLE_ATTN_OUT)
		return mix == QF_GGUF_MIX_Q2_K ? QF_GGML_Q3_K :
		       mix == QF_GGUF_MIX_Q3_K_M ? QF_GGML_Q4_K :
		       mix == QF_GGUF_MIX_Q3_K_L ? QF_GGML_Q5_K : base;
	if (role == QF_GGUF_ROLE_ATTN_Q && strstr(gg, ".attn_qkv."))
		return mix == QF_GGUF_MIX_Q3_K_M || mix == QF_GGUF_MIX_Q3_K_L ?
		       QF_GGML_Q4_K : mix == QF_GGUF_MIX_Q4_K_M ? QF_GGML_Q5_K :
		       mix == QF_GGUF_MIX_Q5_K_M ? QF_GGML_Q6_K : base;
	return base;
}
