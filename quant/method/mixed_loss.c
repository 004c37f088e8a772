/*
 * mixed_loss.c - measured end-of-model sensitivity for mixed precision:
 * the increase of the next-token loss when one unit of one decoder layer
 * (the linears a loader fuses: q/k/v, o, gate/up, down) is rounded to
 * nearest at a width and everything else stays in fp32.  In a sparse
 * MoE layer the gate/up and down units are those linears of every
 * expert (and the shared one) at once, and the trial's forward routes
 * (the router stays in fp32, its input moves with the layers before).
 *
 * The inputs of every layer on the unquantized model are kept, so a
 * trial runs only from its layer to the head.  The fp32 weights of every
 * layer stay in memory for the whole measurement (a 0.6B model: 1.7 GB).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"
#include "method.h"
#include "tf_moe.h"

/* Mean -log p(next token) of x's rows through the head. */
static int mean_nll(const struct qf_model *m, const struct qf_tf_config *c,
		    const float *x, const int32_t *target, int64_t n,
		    double *logp, double *out)
{
	double s = 0;
	int64_t r, k = 0;
	int ret = qf_head_logp(m, c, x, target, n, logp);

	for (r = 0; r < n && !ret; r++)
		if (target[r] >= 0) {
			s -= logp[r];
			k++;
		}
	*out = k ? s / (double)k : 0;
	return ret;
}

/* w' = scale (q - zero) of RTN at p, into dst [out, in]. */
static int rtn_deq(const float *w, int64_t out, int64_t in,
		   const struct qf_qparams *p, float *dst)
{
	int64_t ng = qf_ngroups(in, p->group), gs = ng == 1 ? in : p->group;
	uint8_t *q = malloc((size_t)(out * in));
	uint16_t *sc = malloc((size_t)(out * ng) * sizeof(*sc));
	int32_t *z = malloc((size_t)(out * ng) * sizeof(*z));
	int64_t r, j;
	int ret = q && sc && z ? 0 : -ENOMEM;

	if (!ret)
		ret = qf_rtn_quantize(w, out, in, p, q, sc, z);
	for (r = 0; r < out && !ret; r++)
		for (j = 0; j < in; j++) {
			int64_t g = r * ng + j / gs;

			dst[r * in + j] = qf_f16_to_f32(sc[g]) *
					  ((float)q[r * in + j] - (float)z[g]);
		}
	free(q);
	free(sc);
	free(z);
	return ret;
}

/*
 * A sparse layer's block with unit u (2: gate/up, 3: down) of every
 * expert rounded at p: moe->w is own (a pointer array), the rounded
 * matrices in bufs [nw * QF_MOE_NLINEAR] (NULL where unchanged); free
 * both with moe_trial_free().  *any: some linear is in the unit.
 */
static int moe_trial(const struct qf_tf_config *c, const struct qf_tf_moe *src,
		     int u, const struct qf_qparams *p, struct qf_tf_moe *moe,
		     float **bufs, bool *any)
{
	int e, k, ret = 0;

	*moe = *src;
	moe->w = malloc((size_t)src->nw * QF_MOE_NLINEAR * sizeof(*moe->w));
	if (!moe->w)
		return -ENOMEM;
	memcpy(moe->w, src->w, (size_t)src->nw * QF_MOE_NLINEAR *
	       sizeof(*moe->w));
	for (e = 0; e < src->nw && !ret; e++)
		for (k = 0; k < QF_MOE_NLINEAR && !ret; k++) {
			size_t i = (size_t)e * QF_MOE_NLINEAR + (size_t)k;
			int64_t mi = e == src->experts ? c->shared_inter :
							 c->moe_inter;
			int64_t out = k == QF_MOE_DOWN ? c->hidden : mi;
			int64_t in = k == QF_MOE_DOWN ? mi : c->hidden;

			if ((k == QF_MOE_DOWN) != (u == 3))
				continue;
			bufs[i] = malloc((size_t)(out * in) * sizeof(float));
			ret = bufs[i] ? rtn_deq(src->w[i], out, in, p, bufs[i]) :
					-ENOMEM;
			moe->w[i] = bufs[i];
			*any = true;
		}
	return ret;
}

static void moe_trial_free(struct qf_tf_moe *moe, float **bufs)
{
	size_t i;

	for (i = 0; moe->w && i < (size_t)moe->nw * QF_MOE_NLINEAR; i++) {
		free(bufs[i]);
		bufs[i] = NULL;
	}
	free(moe->w);
	moe->w = NULL;
}

int qf_mixed_loss_table(const struct qf_model *m,
			const struct qf_tf_config *c, const int32_t *ids,
			int nseq, int seqlen, const int unit_of[QF_TF_NLINEAR],
			int nunits, const int *bits, int np, int group,
			double *cost, double *ref_nll,
			int (*progress)(void *arg, int layer, double seconds),
			void *arg)
{
	int64_t ntok = (int64_t)nseq * seqlen, hsz = ntok * c->hidden;
	struct qf_tf_layer *ly = calloc((size_t)c->layers, sizeof(*ly));
	float **xs = calloc((size_t)c->layers + 1, sizeof(*xs));
	float *x = malloc((size_t)hsz * sizeof(*x)), *tmp[QF_TF_NLINEAR];
	int32_t *target = malloc((size_t)ntok * sizeof(*target));
	double *logp = malloc((size_t)ntok * sizeof(*logp)), ref = 0;
	float **xbufs = calloc((size_t)(c->experts + 1) * QF_MOE_NLINEAR,
			       sizeof(*xbufs));	/* moe_trial's */
	int l, u, p, k, i, ret = 0;
	int64_t r;

	memset(tmp, 0, sizeof(tmp));
	if (!ly || !xs || !x || !target || !logp || !xbufs) {
		ret = -ENOMEM;
		goto out;
	}
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++)
		if (!(tmp[k] = malloc((size_t)(qf_tf_linear_out(c, k) * qf_tf_linear_in(c, k)) *
				      sizeof(float))))
			ret = -ENOMEM;
	/* next token within each sequence; the last has none */
	for (r = 0; r < ntok; r++)
		target[r] = (r + 1) % seqlen ? ids[r + 1] : -1;
	for (l = 0; l <= c->layers && !ret; l++)
		if (!(xs[l] = malloc((size_t)hsz * sizeof(float))))
			ret = -ENOMEM;
	if (!ret)
		ret = qf_tf_embed(m, c, ids, ntok, xs[0]);
	for (l = 0; l < c->layers && !ret; l++) {
		ret = qf_tf_layer_load(m, c, l, &ly[l]);
		if (!ret) {
			memcpy(xs[l + 1], xs[l], (size_t)hsz * sizeof(float));
			ret = qf_tf_layer_forward(c, &ly[l], l, xs[l + 1], nseq,
						  seqlen, NULL, NULL);
		}
	}
	if (!ret)
		ret = mean_nll(m, c, xs[c->layers], target, ntok, logp, &ref);
	if (ref_nll)
		*ref_nll = ref;
	for (l = 0; l < c->layers && !ret; l++) {
		double t0 = qf_now();

		for (u = 0; u < nunits && !ret; u++)
			for (p = 0; p < np && !ret; p++) {
				struct qf_tf_layer q = ly[l];
				struct qf_qparams qp = { bits[p], group, false };
				struct qf_tf_moe qm = { 0 };
				double nll = ref;
				bool any = false;

				if (bits[p] >= 16) {
					cost[((size_t)l * nunits + u) * np + p] = 0;
					continue;
				}
				if (ly[l].moe && u >= 2) {	/* experts */
					ret = moe_trial(c, ly[l].moe, u, &qp,
							&qm, xbufs, &any);
					q.moe = &qm;
				}
				for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
					if (unit_of[k] != u || !ly[l].w[k])
						continue;
					ret = rtn_deq(ly[l].w[k], qf_tf_linear_out(c, k),
						      qf_tf_linear_in(c, k), &qp, tmp[k]);
					q.w[k] = tmp[k];
					any = true;
				}
				memcpy(x, xs[l], (size_t)hsz * sizeof(float));
				for (i = l; i < c->layers && !ret && any; i++)
					ret = qf_tf_layer_forward(c, i == l ? &q :
								  &ly[i], i, x,
								  nseq, seqlen,
								  NULL, NULL);
				if (!ret && any)
					ret = mean_nll(m, c, x, target, ntok,
						       logp, &nll);
				moe_trial_free(&qm, xbufs);
				cost[((size_t)l * nunits + u) * np + p] =
					nll - ref;
			}
		if (!ret && progress)
			ret = progress(arg, l, qf_now() - t0);
	}
out:
	for (l = 0; ly && l < c->layers; l++)
		qf_tf_layer_free(&ly[l]);
	for (l = 0; xs && l <= c->layers; l++)
		free(xs[l]);
	for (k = 0; k < QF_TF_NLINEAR; k++)
		free(tmp[k]);
	free(ly);
	free(xs);
	free(x);
	free(target);
	free(logp);
	free(xbufs);
	return ret;
}
