/*
 * eval_scores.c - how far a variant's attention scores are from its
 * source's on a text: the held-out check of AWQ's ReFlip.
 *
 * The source runs in fp32; at every decoder layer the input of q_proj
 * (after input_layernorm) is captured for each window.  The variant's
 * q/k weights are read as its checkpoint stores them (dequantized) and
 * carried back to the source's input domain: an AWQ variant folded its
 * scales into input_layernorm, so its columns are multiplied by
 * g_variant / g_source.  Per layer the relative error of the pre-RoPE
 * scores over all pairs of each window's tokens (qf_awq_score_error) is
 * averaged over the windows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "method.h"

struct grab {
	int layer;
	float *x;			/* [ntok, hidden] */
};

static int grab_hook(void *arg, int layer, enum qf_tf_linear lin,
		     const float *x, int64_t ntok, int64_t in)
{
	struct grab *g = arg;

	if (layer == g->layer && lin == QF_TF_Q)
		memcpy(g->x, x, (size_t)(ntok * in) * sizeof(float));
	return 0;
}

/* w [out, hidden] of the variant, in the source's input domain. */
static int variant_qk(const struct qf_model *var, int l, const char *lin,
		      int64_t out, int64_t hidden, const float *g_src,
		      const float *g_var, float *w)
{
	char prefix[96];
	int64_t r, j;
	int ret;

	snprintf(prefix, sizeof(prefix), "model.layers.%d.self_attn.%s", l,
		 lin);
	ret = qf_model_linear_f32(var, prefix, out, hidden, w);
	for (r = 0; r < out && !ret; r++)
		for (j = 0; j < hidden; j++)
			w[r * hidden + j] *= g_src[j] != 0 ?
					     g_var[j] / g_src[j] : 0;
	return ret;
}

static int read_norm(const struct qf_model *m, int l, int64_t n, float *dst)
{
	const struct qf_model_tensor *t;
	char name[96];

	snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight",
		 l);
	t = qf_model_find(m, name);
	if (!t || qf_st_numel(t->t) != (uint64_t)n)
		return QF_EFORMAT;
	return qf_model_read_f32(t, dst);
}

int qf_eval_scores(const struct qf_model *src, const struct qf_model *var,
		   const struct qf_tok *tok, const char *text, size_t len,
		   int ctx, int windows, double *err)
{
	struct qf_tf_config c;
	struct qf_reflip_opts ro;
	int32_t bos = qf_tok_bos(tok);
	int32_t *toks = NULL, *ids = NULL;
	float *x = NULL, *g_var = NULL, *wq = NULL, *wk = NULL;
	struct grab g = { 0 };
	int64_t chunk, ntq, ntk, n;
	size_t ntok = 0;
	int l, w, ret;

	ret = qf_tf_config_parse(src, &c);
	if (ret < 0)
		return ret;
	if (ctx < 2 || windows < 1)
		return -EINVAL;
	ro = (struct qf_reflip_opts){ c.heads, c.kv_heads, c.head_dim,
				      0.05f, 0.15f };
	ret = qf_tok_encode(tok, text, len, false, &toks, &ntok);
	if (ret < 0)
		return ret;
	chunk = bos >= 0 ? ctx - 1 : ctx;
	if ((int64_t)ntok < chunk * windows) {
		free(toks);
		return -EINVAL;
	}
	n = (int64_t)windows * ctx;
	ntq = (int64_t)c.heads * c.head_dim;
	ntk = (int64_t)c.kv_heads * c.head_dim;
	ids = malloc((size_t)n * sizeof(*ids));
	x = malloc((size_t)(n * c.hidden) * sizeof(*x));
	g.x = malloc((size_t)(n * c.hidden) * sizeof(*g.x));
	g_var = malloc((size_t)c.hidden * sizeof(*g_var));
	wq = malloc((size_t)(ntq * c.hidden) * sizeof(*wq));
	wk = malloc((size_t)(ntk * c.hidden) * sizeof(*wk));
	if (!ids || !x || !g.x || !g_var || !wq || !wk) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (w = 0; w < windows; w++) {
		int32_t *d = ids + (int64_t)w * ctx;
		int64_t off = bos >= 0 ? 1 : 0, k;

		if (bos >= 0)
			d[0] = bos;
		for (k = 0; k < chunk; k++)
			d[off + k] = toks[w * chunk + k];
	}
	for (w = 0; w < n; w++)
		if (ids[w] < 0 || ids[w] >= c.vocab) {
			ret = QF_EFORMAT;
			goto out_free;
		}
	ret = qf_tf_embed(src, &c, ids, n, x);
	for (l = 0; l < c.layers && !ret; l++) {
		struct qf_tf_layer ly;
		double sum = 0;

		ret = qf_tf_layer_load(src, &c, l, &ly);
		if (ret < 0)
			break;
		g.layer = l;
		ret = qf_tf_layer_forward(&c, &ly, l, x, windows, ctx,
					  grab_hook, &g);
		if (!ret)
			ret = read_norm(var, l, c.hidden, g_var);
		if (!ret && c.norm_plus1)	/* gemma stores w of 1 + w */
			qf_tf_norm_plus1(g_var, c.hidden);
		if (!ret)
			ret = variant_qk(var, l, "q_proj", ntq, c.hidden,
					 ly.in_norm, g_var, wq);
		if (!ret)
			ret = variant_qk(var, l, "k_proj", ntk, c.hidden,
					 ly.in_norm, g_var, wk);
		for (w = 0; w < windows && !ret; w++)
			sum += qf_awq_score_error(ly.w[QF_TF_Q], ly.w[QF_TF_K],
						  wq, wk, c.hidden,
						  g.x + (int64_t)w * ctx *
						  c.hidden, ctx, &ro);
		err[l] = sum / windows;
		qf_tf_layer_free(&ly);
	}
out_free:
	free(toks);
	free(ids);
	free(x);
	free(g.x);
	free(g_var);
	free(wq);
	free(wk);
	return ret;
}
