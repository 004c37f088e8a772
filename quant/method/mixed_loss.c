/*
 * mixed_loss.c - measured end-of-model sensitivity for mixed precision:
 * the KL divergence of the next-token distribution from the unquantized
 * model's when one unit of one decoder layer (the linears a loader
 * fuses: q/k/v, o, gate/up, down) is rounded to nearest at a width and
 * everything else stays in fp32.  In a sparse MoE layer the gate/up and
 * down units are those linears of every expert (and the shared one) at
 * once, and the trial's forward routes (the router stays in fp32, its
 * input moves with the layers before).
 *
 * Why KL and not the loss increase on the text: the loss increase of
 * one small perturbation is a difference of two nearly equal sums whose
 * first-order term has either sign token by token; on a few thousand
 * tokens that noise is as large as the signal and flipped the budget's
 * choices with the calibration size (issue #24).  The KL is second
 * order, never negative, and counts every position.
 *
 * The inputs of every layer on the unquantized model are kept, so a
 * trial runs only from its layer to the head.  The fp32 weights of every
 * layer stay in memory for the whole measurement (a 0.6B model: 1.7 GB).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"
#include "method.h"
#include "tf_moe.h"

#define KL_BUDGET (256u << 20)	/* bytes of each logits slice (two): the
				 * head is packed once per slice */
#define KL_STREAMS (512 << 20)	/* bytes of trial streams held at once */

/* What the trials share: the model, the reference run and scratch. */
struct kl_run {
	const struct qf_model *m;
	const struct qf_tf_config *c;
	struct qf_tf_layer *ly;		/* [layers], fp32 weights */
	float **xs;			/* [layers + 1], each layer's input */
	float **x;			/* [batch], the trials' streams */
	int batch;			/* trials whose KL is taken at once */
	float *tmp[QF_TF_NLINEAR];	/* rounded weights */
	float **xbufs;			/* moe_trial's */
	float *la, *lb;			/* logits slices */
	double *ea, *ma, *sa;		/* la's side of the KL, once for every
					 * trial of a batch (batch > 1) */
	struct qf_tf_headw hw;		/* the head in fp32, or none */
	int64_t rows;			/* rows per slice */
	int nseq, seqlen;
	int64_t ntok;
	/* the caller's, called with layer -1 between slices: a stop */
	int (*progress)(void *arg, int layer, double seconds);
	void *arg;
};

/*
 * For each of the nt trial streams x[t] [ntok, hidden], the mean over the
 * rows of KL(head(xref) || head(x[t])) into *out[t], xref the reference's
 * final stream.  The head runs on slices of rows into la (the
 * reference's, once per slice for every trial) and lb; between slices
 * the caller may stop it (progress with layer -1).
 */
static int mean_kl(struct kl_run *k, float *const *x, int nt,
		   double *const *out)
{
	const struct qf_tf_config *c = k->c;
	const float *xref = k->xs[c->layers];
	double *kl = malloc((size_t)k->rows * sizeof(*kl));
	int64_t n = k->ntok, r0, r;
	int t, ret = kl ? 0 : -ENOMEM;

	for (t = 0; t < nt; t++)
		*out[t] = 0;
	for (r0 = 0; r0 < n && !ret; r0 += k->rows) {
		int64_t m = n - r0 < k->rows ? n - r0 : k->rows;

		ret = qf_tf_head_run(k->m, &k->hw, c, xref + r0 * c->hidden, m,
				     k->la);
		if (!ret && k->ea)
			qf_logits_ref_rows(k->la, m, c->vocab, k->ea, k->ma,
					   k->sa);
		for (t = 0; t < nt && !ret; t++) {
			ret = qf_tf_head_run(k->m, &k->hw, c,
					     x[t] + r0 * c->hidden, m, k->lb);
			if (!ret && k->ea)
				qf_logits_kl_ref_rows(k->la, k->ea, k->ma,
						      k->sa, k->lb, m,
						      c->vocab, kl);
			else if (!ret)
				qf_logits_kl_rows(k->la, k->lb, m, c->vocab, kl);
			for (r = 0; r < m && !ret; r++)	/* in row order */
				*out[t] += kl[r];
		}
		if (!ret && k->progress)
			ret = k->progress(k->arg, -1, 0);
	}
	free(kl);
	for (t = 0; t < nt; t++)
		*out[t] = n ? *out[t] / (double)n : 0;
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

/*
 * The final stream of the model with unit u of layer l rounded at qp,
 * into x; *any false when the unit has no linear here (x untouched).
 */
static int kl_trial(struct kl_run *k, int l, int u, const int *unit_of,
		    const struct qf_qparams *qp, float *x, bool *any)
{
	const struct qf_tf_config *c = k->c;
	struct qf_tf_layer q = k->ly[l];
	struct qf_tf_moe qm = { 0 };
	int i, ret = 0;

	*any = false;
	if (k->ly[l].moe && u >= 2) {	/* experts */
		ret = moe_trial(c, k->ly[l].moe, u, qp, &qm, k->xbufs, any);
		q.moe = &qm;
	}
	for (i = 0; i < QF_TF_NLINEAR && !ret; i++) {
		if (unit_of[i] != u || !k->ly[l].w[i])
			continue;
		ret = rtn_deq(k->ly[l].w[i], qf_tf_linear_out(c, i),
			      qf_tf_linear_in(c, i), qp, k->tmp[i]);
		q.w[i] = k->tmp[i];
		*any = true;
	}
	if (*any && !ret)
		memcpy(x, k->xs[l], (size_t)(k->ntok * c->hidden) *
		       sizeof(float));
	for (i = l; i < c->layers && !ret && *any; i++)
		ret = qf_tf_layer_forward(c, i == l ? &q : &k->ly[i], i, x,
					  k->nseq, k->seqlen, NULL, NULL);
	moe_trial_free(&qm, k->xbufs);
	return ret;
}

static int kl_run_init(struct kl_run *k, const int32_t *ids, int trials)
{
	const struct qf_tf_config *c = k->c;
	int64_t hsz = k->ntok * c->hidden;
	int64_t fit = KL_STREAMS / (hsz * (int64_t)sizeof(float));
	int l, i, ret = 0;

	k->rows = KL_BUDGET / ((int64_t)c->vocab * 4);
	k->rows = k->rows < 1 ? 1 : k->rows > k->ntok ? k->ntok : k->rows;
	k->ly = calloc((size_t)c->layers, sizeof(*k->ly));
	k->xs = calloc((size_t)c->layers + 1, sizeof(*k->xs));
	k->batch = fit < 1 ? 1 : fit < trials ? (int)fit : trials;
	k->x = calloc((size_t)k->batch, sizeof(*k->x));
	for (i = 0; k->x && i < k->batch && !ret; i++)
		if (!(k->x[i] = malloc((size_t)hsz * sizeof(float))))
			ret = -ENOMEM;
	k->xbufs = calloc((size_t)(c->experts + 1) * QF_MOE_NLINEAR,
			  sizeof(*k->xbufs));
	k->la = malloc((size_t)(k->rows * c->vocab) * sizeof(*k->la));
	k->lb = malloc((size_t)(k->rows * c->vocab) * sizeof(*k->lb));
	if (k->batch > 1) {	/* exp of the reference's logits once */
		k->ea = malloc((size_t)(k->rows * c->vocab) * sizeof(*k->ea));
		k->ma = malloc((size_t)k->rows * sizeof(*k->ma));
		k->sa = malloc((size_t)k->rows * sizeof(*k->sa));
	}
	if (ret || !k->ly || !k->xs || !k->x || !k->xbufs || !k->la ||
	    !k->lb || (k->batch > 1 && (!k->ea || !k->ma || !k->sa)))
		return -ENOMEM;
	for (i = 0; i < QF_TF_NLINEAR && !ret; i++)
		if (!(k->tmp[i] = malloc((size_t)(qf_tf_linear_out(c, i) *
						  qf_tf_linear_in(c, i)) *
					 sizeof(float))))
			ret = -ENOMEM;
	for (l = 0; l <= c->layers && !ret; l++)
		if (!(k->xs[l] = malloc((size_t)hsz * sizeof(float))))
			ret = -ENOMEM;
	if (!ret)	/* held: the layers are held in fp32 too */
		ret = qf_tf_head_load(k->m, c, SIZE_MAX, &k->hw);
	if (!ret)
		ret = qf_tf_embed(k->m, c, ids, k->ntok, k->xs[0]);
	for (l = 0; l < c->layers && !ret; l++) {
		ret = qf_tf_layer_load(k->m, c, l, &k->ly[l]);
		if (!ret) {
			memcpy(k->xs[l + 1], k->xs[l],
			       (size_t)hsz * sizeof(float));
			ret = qf_tf_layer_forward(c, &k->ly[l], l, k->xs[l + 1],
						  k->nseq, k->seqlen, NULL,
						  NULL);
		}
	}
	return ret;
}

static void kl_run_free(struct kl_run *k)
{
	int l;

	for (l = 0; k->ly && l < k->c->layers; l++)
		qf_tf_layer_free(&k->ly[l]);
	for (l = 0; k->xs && l <= k->c->layers; l++)
		free(k->xs[l]);
	for (l = 0; l < QF_TF_NLINEAR; l++)
		free(k->tmp[l]);
	free(k->ly);
	free(k->xs);
	for (l = 0; k->x && l < k->batch; l++)
		free(k->x[l]);
	free(k->x);
	free(k->xbufs);
	free(k->la);
	free(k->lb);
	free(k->ea);
	free(k->ma);
	free(k->sa);
	qf_tf_head_free(&k->hw);
}

int qf_mixed_kl_table(const struct qf_model *m, const struct qf_tf_config *c,
		      const int32_t *ids, int nseq, int seqlen,
		      const int unit_of[QF_TF_NLINEAR], int nunits,
		      const int *bits, int np, int group, double *kl,
		      int (*progress)(void *arg, int layer, double seconds),
		      void *arg)
{
	struct kl_run k = {
		.m = m, .c = c, .nseq = nseq, .seqlen = seqlen,
		.ntok = (int64_t)nseq * seqlen, .progress = progress,
		.arg = arg,
	};
	double **at = calloc((size_t)(nunits * np) + 1, sizeof(*at));
	int l, t, n, ret;

	/* every trial's layers on one scratch (qf_tf_scratch_keep) */
	qf_tf_scratch_keep(true);
	ret = at ? kl_run_init(&k, ids, nunits * np) : -ENOMEM;

	for (l = 0; l < c->layers && !ret; l++) {
		double t0 = qf_now();

		/* the trials of layer l, batch by batch: each slice of the
		 * reference's logits serves every trial of a batch */
		for (t = 0; t < nunits * np && !ret; t += n) {
			int b = 0;

			for (n = 0; t + n < nunits * np && b < k.batch && !ret;
			     n++) {
				int u = (t + n) / np, p = (t + n) % np;
				struct qf_qparams qp = { bits[p], group, false };
				double *o = &kl[((size_t)l * nunits + u) * np + p];
				bool any = false;

				*o = 0;
				if (bits[p] < 16)
					ret = kl_trial(&k, l, u, unit_of, &qp,
						       k.x[b], &any);
				if (any)
					at[b++] = o;
				if (!ret && progress)	/* a trial: a minute */
					ret = progress(arg, -1, 0);
			}
			if (!ret && b)
				ret = mean_kl(&k, k.x, b, at);
		}
		if (!ret && progress)
			ret = progress(arg, l, qf_now() - t0);
	}
	kl_run_free(&k);
	qf_tf_scratch_keep(false);
	free(at);
	return ret;
}
