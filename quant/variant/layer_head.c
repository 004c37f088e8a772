/*
 * layer_head.c - AWQ of the quantized lm_head (awq_w4_g<g>_head4): the
 * head is one more linear whose input is the final norm's output, so
 * AWQ treats it as it treats q/k/v after input_layernorm (awq_layer.c):
 * scales s per input channel from the activation salience, the alpha
 * whose RTN gives the least output error of the head, s folded into
 * model.norm (divided; gemma stores (1 + w) / s - 1) and into the
 * head's columns (multiplied), so the unquantized model computes what
 * it did; then clipping, RTN on the AWQ grid and the heuristic flips.
 * qf_layer_head (layer.h) computes the head's inputs and calls GPTQ's
 * (layer.c) or AWQ's quantization of it; qf_layer_head_hessian gives the
 * same inputs' X^T X to the k-quant views' GPTQ of output.weight.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "tf_kernels.h"

/* Columns of w [out, in] times s; h [in, in] divided by s_i s_j. */
static void fold_in(float *w, int64_t out, int64_t in, float *h,
		    const float *s)
{
	int64_t i, j;

	for (i = 0; i < out; i++)
		for (j = 0; j < in; j++)
			w[i * in + j] *= s[j];
	for (i = 0; i < in; i++)
		for (j = 0; j < in; j++)
			h[i * in + j] /= s[i] * s[j];
}

/* Scale search, fold, clip, round, flip: codes into q/sc/z, s [in]. */
static int awq_head_codes(const struct qf_variant *v, float *w, int64_t out,
			  int64_t in, struct qf_lin_stats *st,
			  struct qf_awq_opts *o, uint8_t *q, uint16_t *sc,
			  int32_t *z, float *s, struct qf_layer_res *r)
{
	size_t wn = (size_t)(out * in);
	float *sal = malloc((size_t)in * sizeof(float));
	float *w0 = malloc(wn * sizeof(float));
	const float *wl[1] = { w };
	int64_t gs = o->group >= in ? in : o->group;
	double alpha = 0;
	int ret = sal && w0 ? 0 : -ENOMEM;

	if (!ret)	/* round to nearest, no scales: for the record */
		ret = qf_awq_rtn(w, out, in, o, q, sc, z);
	if (!ret) {
		r->loss_rtn[v->head] = qf_awq_rel_err_codes(w, q, sc, z, gs,
							    out, in, st->h);
		qf_awq_salience(st, v->spec.flags & QF_SPEC_L2, sal);
		ret = qf_awq_search_scale(wl, &out, 1, in, sal, st->h, o, s,
					  &alpha, NULL, NULL);
	}
	if (!ret) {
		fold_in(w, out, in, st->h, s);
		memcpy(w0, w, wn * sizeof(float));
		ret = qf_awq_search_clip(w, out, in, st->h, o);
	}
	if (!ret)
		ret = qf_awq_rtn(w, out, in, o, q, sc, z);
	if (!ret && o->flip)
		ret = qf_awq_flip(w, out, in, st->h, o, q, sc, z, NULL, NULL,
				  NULL);
	if (!ret) {	/* the error in the scaled domain, as awq_layer.c */
		r->loss[v->head] = qf_awq_rel_err_codes(w0, q, sc, z, gs, out,
							in, st->h);
		r->alpha[v->head] = alpha;
		r->score[2 * v->head] = r->score[2 * v->head + 1] = -1;
	}
	free(sal);
	free(w0);
	return ret;
}

/*
 * AWQ of the head: w [out, in] the head's weights, norm [in] the final
 * norm as computed (1 + w for gemma), st the statistics of the norm's
 * outputs; scales searched on the head's output error and folded into
 * norm and w (st follows), the head's codes and the folded norm (the
 * group's last tensor) into r.
 */
static int awq_head(const struct qf_variant *v, const struct qf_tf_config *c,
		    float *w, float *norm, struct qf_lin_stats *st,
		    struct qf_layer_res *r)
{
	const struct qf_vgroup *g = &v->g[v->head];
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group), j;
	struct qf_awq_opts o;
	uint8_t *q = malloc((size_t)(out * in));
	uint16_t *sc = malloc((size_t)(out * ng) * sizeof(uint16_t));
	int32_t *z = malloc((size_t)(out * ng) * sizeof(int32_t));
	float *s = malloc((size_t)in * sizeof(float));
	int ret = q && sc && z && s ? 0 : -ENOMEM;

	if (!g->norm)	/* variant.c folds into model.norm or packs none */
		ret = -EINVAL;
	qf_awq_defaults(&o, v->spec.head_bits,
			v->spec.group < 0 ? INT32_MAX : v->spec.group);
	if (!ret)
		ret = awq_head_codes(v, w, out, in, st, &o, q, sc, z, s, r);
	if (!ret)
		ret = qf_layer_emit(v, v->head, q, sc, z, r);
	if (!ret) {	/* the final norm, divided by s, as stored */
		for (j = 0; j < in; j++)
			norm[j] /= s[j];
		qf_layer_store(&v->t[g->first + g->n - 1], norm,
			       c->norm_plus1 ? 1.0f : 0.0f,
			       r->pending[(size_t)v->head * 4 + g->n - 1]);
	}
	free(q);
	free(sc);
	free(z);
	free(s);
	return ret;
}

/*
 * The head's input statistics st: X^T X of the final norm's outputs over
 * x [ntok, in] (the last layer's); the norm as computed (1 + w for
 * gemma) into norm [in].
 */
static int head_stats(const struct qf_model *m, const struct qf_tf_config *c,
		      const float *x, int64_t ntok, int64_t in, float *norm,
		      struct qf_lin_stats *st)
{
	const struct qf_model_tensor *nt = qf_model_find(m,
							 "model.norm.weight");
	float *xn = malloc((size_t)(ntok * in) * sizeof(float));
	int ret = xn ? 0 : -ENOMEM;

	memset(st, 0, sizeof(*st));
	if (!ret && (!nt || nt->t->ndim != 1 || nt->t->shape[0] != in))
		ret = QF_EFORMAT;
	if (!ret)
		ret = qf_model_read_f32(nt, norm);
	if (!ret && c->norm_plus1)	/* gemma: 1 + w */
		qf_tf_norm_plus1(norm, in);
	if (!ret)
		ret = qf_lin_stats_init(st, in, true);
	if (!ret) {	/* the head's inputs: the final norm's outputs */
		qf_tf_rmsnorm(x, norm, ntok, in, c->rms_eps, xn);
		qf_lin_stats_add(st, xn, ntok);
		qf_lin_stats_finish(st);
	}
	free(xn);
	return ret;
}

int qf_layer_head(const struct qf_variant *v, const struct qf_tf_config *c,
		  const float *x, int64_t ntok, struct qf_layer_res *r)
{
	const struct qf_vgroup *g = &v->g[v->head];
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	float *norm = malloc((size_t)in * sizeof(float));
	float *w = malloc((size_t)(out * in) * sizeof(float));
	struct qf_lin_stats st;
	int ret = norm && w ? 0 : -ENOMEM;

	memset(&st, 0, sizeof(st));
	if (!ret)
		ret = head_stats(v->m, c, x, ntok, in, norm, &st);
	if (!ret)
		ret = qf_model_read_f32(g->w, w);
	if (!ret && v->spec.method == QF_METHOD_AWQ)
		ret = awq_head(v, c, w, norm, &st, r);
	else if (!ret)
		ret = qf_layer_gptq_one(v, v->head, w, &st, r);
	qf_lin_stats_free(&st);
	free(norm);
	free(w);
	return ret;
}

int qf_layer_head_hessian(const struct qf_model *m,
			  const struct qf_tf_config *c, const float *x,
			  int64_t ntok, float **h)
{
	float *norm = malloc((size_t)c->hidden * sizeof(float));
	struct qf_lin_stats st;
	int ret = norm ? head_stats(m, c, x, ntok, c->hidden, norm, &st) :
		  -ENOMEM;

	*h = NULL;
	if (!ret) {
		*h = st.h;	/* taken over */
		st.h = NULL;
	}
	if (norm)
		qf_lin_stats_free(&st);
	free(norm);
	return ret;
}
