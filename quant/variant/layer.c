/*
 * layer.c - one decoder layer through its calibrated method (layer.h):
 * the glue between the methods (gptq.c, awq_layer.c, brecq.c) and the
 * variant's packed tensors (variant.c).
 *
 * GPTQ's losses are output-error energies tr(D H D^T) relative to the
 * weight's own, for the method and for round to nearest at the same
 * grid, so the record shows what the method bought.  Everything here
 * is deterministic for a given BLAS thread count: a resumed job replays
 * the committed layers and must continue with the same bits.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "tf_kernels.h"

int qf_layer_res_init(struct qf_layer_res *r, size_t ng)
{
	if (!ng)
		ng = 1;
	memset(r, 0, sizeof(*r));
	r->pending = calloc(ng * 4, sizeof(*r->pending));
	r->loss = calloc(ng, sizeof(double));
	r->loss_rtn = calloc(ng, sizeof(double));
	r->alpha = calloc(ng, sizeof(double));
	r->score = calloc(2 * ng, sizeof(double));
	if (!r->pending || !r->loss || !r->loss_rtn || !r->alpha ||
	    !r->score) {
		qf_layer_res_free(r, 0);
		return -ENOMEM;
	}
	return 0;
}

void qf_layer_res_free(struct qf_layer_res *r, size_t ng)
{
	size_t i;

	for (i = 0; r->pending && i < ng * 4; i++)
		free(r->pending[i]);
	free(r->pending);
	free(r->loss);
	free(r->loss_rtn);
	free(r->alpha);
	free(r->score);
	free(r->awq_s_down);
	r->awq_s_down = NULL;
	r->pending = NULL;
	r->loss = r->loss_rtn = r->alpha = r->score = NULL;
}

#define ENERGY_ROWS 256	/* rows of D per product: [ENERGY_ROWS, in] */

/* tr(D H D^T): the output error energy of D on X (tmp, d: [ENERGY_ROWS,
 * in] each). */
static double energy(const struct qf_err_rows *e, const float *h, int64_t out,
		     float *tmp, float *d)
{
	int64_t in = e->in, r0, i, n;
	double sum = 0;

	for (r0 = 0; r0 < out; r0 += ENERGY_ROWS) {
		n = out - r0 < ENERGY_ROWS ? out - r0 : ENERGY_ROWS;
		qf_err_rows(e, r0, n, d);
		qf_sgemm(false, false, (int)n, (int)in, (int)in, 1.0f, d,
			 (int)in, h, (int)in, 0.0f, tmp, (int)in);
		for (i = 0; i < n * in; i++)
			sum += (double)tmp[i] * d[i];
	}
	return sum;
}

/*
 * GPTQ's _rot (2 and 3 bits on the rotated model): damping 0.1 instead of
 * 0.01 and ROT_PASSES sweeps of coordinate descent on the codes after the
 * column loop (qf_gptq_refine).  On the 5M Llama each lowered
 * gptq_w2_g64_rot's held-out gap to the source: damping alone 0.373 ->
 * 0.290, the sweeps alone 0.373 -> 0.285, both 0.284 (README.md).
 */
#define ROT_DAMP 0.1f
#define ROT_PASSES 10

static int quantize_linear(const struct qf_variant *v, int gi, float *w,
			   struct qf_lin_stats *st, struct qf_layer_res *r)
{
	const struct qf_vgroup *g = &v->g[gi];
	const struct qf_spec *s = &v->spec;
	bool rot = s->method == QF_METHOD_GPTQ && (s->flags & QF_SPEC_ROT);
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group), gs = ng == 1 ? in : g->qp.group;
	struct qf_gptq_opts o = {
		.qp = g->qp,
		.act_order = qf_spec_act_order(s),
		.static_groups = qf_spec_static_groups(s),
		.damp = rot ? ROT_DAMP : 0.01f,
		.blocksize = 128,
		.times = &r->gt,
	};
	size_t wn = (size_t)(out * in);
	float *w0 = malloc(wn * sizeof(float)), *h = st->h;
	float *tmp = malloc((size_t)(2 * ENERGY_ROWS * in) * sizeof(float));
	uint8_t *dead = malloc((size_t)in);
	uint8_t *q = malloc(wn);
	uint16_t *sc = malloc((size_t)(out * ng) * 2);
	int32_t *z = malloc((size_t)(out * ng) * 4), *gidx = malloc((size_t)in * 4);
	void **bufs = r->pending + (size_t)gi * 4;
	struct qf_err_rows e = { .w0 = w0, .in = in, .ng = ng, .gs = gs };
	float *blk = tmp + ENERGY_ROWS * in;
	double base, loss, t0 = qf_now(), t1;
	int64_t k;
	int ret = -ENOMEM;

	if (!w0 || !tmp || !dead || !q || !sc || !z || !gidx)
		goto out_free;
	memcpy(w0, w, wn * sizeof(float));
	/* GPTQ gives dead inputs a unit diagonal: restored after it, so
	 * the energies are those of H itself (no copy of it is kept) */
	for (k = 0; k < in; k++)
		dead[k] = h[k * in + k] == 0;
	base = energy(&e, h, out, tmp, blk);
	/* round to nearest at the same settings, for the record */
	ret = qf_rtn_quantize(w0, out, in, &g->qp, q, sc, z);
	if (ret < 0)
		goto out_free;
	e.q = q, e.sc = sc, e.z = z;
	r->loss_rtn[gi] = base > 0 ? energy(&e, h, out, tmp, blk) / base : 0;
	t1 = qf_now();
	ret = qf_gptq_quantize(w, out, in, h, &o, q, sc, z, gidx, &loss);
	if (ret < 0)
		goto out_free;
	for (k = 0; k < in; k++)
		if (dead[k])
			h[k * in + k] = 0;
	if (rot)	/* (its grids and g_idx stay GPTQ's) */
		ret = qf_gptq_refine(w0, w, out, in, h, o.damp, g->qp.bits,
				     q, sc, z, gidx, ng, ROT_PASSES);
	if (ret < 0)
		goto out_free;
	t0 += qf_now() - t1;	/* the comparison's time only */
	e.q = NULL, e.w = w;
	r->loss[gi] = base > 0 ? energy(&e, h, out, tmp, blk) / base : 0;
	r->alpha[gi] = r->score[2 * gi] = r->score[2 * gi + 1] = -1;
	r->compare_s += qf_now() - t0;
	t0 = qf_now();
	for (k = 0; k < (int64_t)g->n; k++) {
		bufs[k] = malloc(qf_vtensor_bytes(&v->t[g->first + k]));
		if (!bufs[k]) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	qf_variant_emit(v, (size_t)gi, q, sc, z, gidx, bufs);
	r->pack_s += qf_now() - t0;
	ret = 0;
out_free:
	free(w0);
	free(dead);
	free(tmp);
	free(q);
	free(sc);
	free(z);
	free(gidx);
	return ret;
}

void qf_layer_dequant(const struct qf_vgroup *g, const uint8_t *q,
		      const uint16_t *sc, const int32_t *z,
		      const int32_t *gidx, float *w)
{
	int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
	int64_t ng = qf_ngroups(in, g->qp.group), r, c;

	/* the same float expression qf_gptq_quantize leaves in w */
	for (r = 0; r < out; r++)
		for (c = 0; c < in; c++) {
			int64_t x = r * ng + gidx[c];

			w[r * in + c] = qf_f16_to_f32(sc[x]) *
				((float)q[r * in + c] - (float)z[x]);
		}
}

/*
 * While down is quantized, gate and up (quantized, their packed tensors
 * pending in r) need not be held in fp32: at Llama-3-70B's shapes that
 * is 1.9 GB beside down's X^T X (3.3 GB).  park() frees them, keeping a
 * hash of each; unpark() makes them again from the packed tensors (the
 * values the quantizer left, qf_layer_dequant) and checks the hash.
 */
struct parked {
	enum qf_tf_linear k[2];
	int n;
	uint64_t hash[2];
	int64_t up_at;		/* fused gate_up (phi3): up's offset in
				 * gate's rows, else -1 */
};

static void park(const struct qf_layer_map *m, struct qf_tf_layer *ly,
		 const struct qf_layer_res *r, struct parked *pk)
{
	static const enum qf_tf_linear gu[2] = { QF_TF_GATE, QF_TF_UP };
	int i;

	pk->n = 0;
	pk->up_at = ly->borrowed & (1u << QF_TF_UP) ?
		    ly->w[QF_TF_UP] - ly->w[QF_TF_GATE] : -1;
	for (i = 0; i < 2; i++) {
		int gi = m->lin_group[gu[i]];
		const struct qf_vgroup *g;

		if (gi < 0 || !ly->w[gu[i]] || !r->pending[(size_t)gi * 4] ||
		    (ly->borrowed & (1u << gu[i])))
			continue;
		g = &m->v->g[gi];
		pk->k[pk->n] = gu[i];
		pk->hash[pk->n++] = qf_hash64(ly->w[gu[i]],
					      (size_t)(g->w->t->shape[0] *
						       g->w->t->shape[1]) *
					      sizeof(float), 0);
		free(ly->w[gu[i]]);
		ly->w[gu[i]] = NULL;
	}
}

static int unpark(const struct qf_layer_map *m, struct qf_tf_layer *ly,
		  const struct qf_layer_res *r, const struct parked *pk)
{
	int i, ret = 0;

	for (i = 0; i < pk->n && !ret; i++) {
		int gi = m->lin_group[pk->k[i]];
		const struct qf_vgroup *g = &m->v->g[gi];
		int64_t out = g->w->t->shape[0], in = g->w->t->shape[1];
		int64_t ng = qf_ngroups(in, g->qp.group);
		size_t wn = (size_t)(out * in);
		uint8_t *q = malloc(wn);
		uint16_t *sc = malloc((size_t)(out * ng) * 2);
		int32_t *z = malloc((size_t)(out * ng) * 4);
		int32_t *gidx = malloc((size_t)in * 4);
		float *w = malloc(wn * sizeof(float));

		ret = q && sc && z && gidx && w ?
		      qf_ckpt_unpack_group(QF_CKPT_GPTQ_V1, g->pack_bits, out,
					   in, ng, g->qp.group,
					   (const void *const *)r->pending +
					   (size_t)gi * 4, q, sc, z, gidx) :
		      -ENOMEM;
		if (!ret) {
			qf_layer_dequant(g, q, sc, z, gidx, w);
			if (qf_hash64(w, wn * sizeof(float), 0) != pk->hash[i])
				ret = QF_ECORRUPT;	/* a bug: not these */
		}
		if (!ret)
			ly->w[pk->k[i]] = w, w = NULL;
		if (!ret && pk->k[i] == QF_TF_GATE && pk->up_at >= 0)
			ly->w[QF_TF_UP] = ly->w[QF_TF_GATE] + pk->up_at;
		free(q);
		free(sc);
		free(z);
		free(gidx);
		free(w);
	}
	return ret;
}

int qf_layer_gptq(const struct qf_layer_map *m, struct qf_tf_layer *ly,
		  const enum qf_tf_linear *lin, int n,
		  struct qf_lin_stats *stats, struct qf_layer_res *r)
{
	struct parked pk = { .n = 0 };
	int i, ret = 0;

	if (n == 1 && lin[0] == QF_TF_DOWN)
		park(m, ly, r, &pk);
	for (i = 0; i < n && !ret; i++) {
		int gi = m->lin_group[lin[i]];

		if (gi < 0)
			continue;	/* kept in the source dtype */
		ret = quantize_linear(m->v, gi, ly->w[lin[i]], &stats[lin[i]],
				      r);
	}
	if (pk.n) {	/* down's X^T X first: it is done with */
		qf_lin_stats_free(&stats[QF_TF_DOWN]);
		if (!ret)
			ret = unpark(m, ly, r, &pk);
	}
	return ret;
}

int qf_layer_gptq_one(const struct qf_variant *v, int gi, float *w,
		      struct qf_lin_stats *st, struct qf_layer_res *r)
{
	return gi < 0 ? 0 : quantize_linear(v, gi, w, st, r);
}

void qf_layer_imatrix(const enum qf_tf_linear *lin, int n,
		      const struct qf_lin_stats *stats, float *imat)
{
	size_t at = 0;
	int i;

	for (i = 0; i < n; i++) {
		const struct qf_lin_stats *st = &stats[lin[i]];
		int64_t c;

		for (c = 0; c < st->in; c++)
			imat[at++] = (float)(st->sum_sq[c] /
				(st->n > 0 ? (double)st->n : 1));
	}
}

/* (layer.h) norms, and a MoE block's router (layer_moe.c) */
void qf_layer_store(const struct qf_vtensor *t, float *x, float shift,
		    void *dst)
{
	int64_t i, n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);

	for (i = 0; i < n; i++) {
		if (t->dtype == QF_DT_BF16)
			((uint16_t *)dst)[i] = qf_f32_to_bf16(x[i] - shift);
		else if (t->dtype == QF_DT_F16)
			((uint16_t *)dst)[i] = qf_f32_to_f16(x[i] - shift);
		else
			((float *)dst)[i] = x[i] - shift;
	}
	qf_to_f32(t->dtype, dst, (size_t)n, x);
	for (i = 0; shift != 0 && i < n; i++)
		x[i] += shift;
}

/*
 * Pack group gi's integer results into its output tensors, allocated
 * into r->pending (groups of consecutive columns: g_idx is c / gs).
 */
static int emit_group(const struct qf_variant *v, int gi, const uint8_t *q,
		      const uint16_t *sc, const int32_t *z,
		      struct qf_layer_res *r)
{
	const struct qf_vgroup *g = &v->g[gi];
	void **bufs = r->pending + (size_t)gi * 4;
	int64_t in = g->w->t->shape[1], c;
	int64_t gs = qf_ngroups(in, g->qp.group) == 1 ? in : g->qp.group;
	int32_t *gidx = malloc((size_t)in * sizeof(*gidx));
	uint32_t t;

	for (t = 0; t < g->n && gidx; t++)
		if (!(bufs[t] = malloc(qf_vtensor_bytes(&v->t[g->first + t]))))
			break;
	if (!gidx || t < g->n) {
		free(gidx);
		return -ENOMEM;
	}
	for (c = 0; c < in; c++)
		gidx[c] = (int32_t)(c / gs);
	qf_variant_emit(v, (size_t)gi, q, sc, z, gidx, bufs);
	free(gidx);
	return 0;
}

int qf_layer_emit(const struct qf_variant *v, int gi, const uint8_t *q,
		  const uint16_t *sc, const int32_t *z, struct qf_layer_res *r)
{
	return emit_group(v, gi, q, sc, z, r);
}

/* Integer results of the layer's quantized linears (NULL: kept). */
struct codes {
	uint8_t *q[QF_TF_NLINEAR];
	uint16_t *sc[QF_TF_NLINEAR];
	int32_t *z[QF_TF_NLINEAR];
};

/* Room for linear k's codes, out rows of group g: 0 or -ENOMEM. */
static int codes_alloc(struct codes *cd, int k, int64_t rows,
		       const struct qf_vgroup *g)
{
	size_t out = (size_t)rows;
	size_t in = (size_t)g->w->t->shape[1];
	size_t ng = (size_t)qf_ngroups((int64_t)in, g->qp.group);

	cd->q[k] = malloc(out * in);
	cd->sc[k] = malloc(out * ng * sizeof(uint16_t));
	cd->z[k] = malloc(out * ng * sizeof(int32_t));
	return cd->q[k] && cd->sc[k] && cd->z[k] ? 0 : -ENOMEM;
}

static void codes_free(struct codes *cd)
{
	int k;

	for (k = 0; k < QF_TF_NLINEAR; k++) {
		free(cd->q[k]);
		free(cd->sc[k]);
		free(cd->z[k]);
	}
}

/*
 * Linears sharing linear k's checkpoint tensor from k on: 1, or the
 * count of a fused tensor's linears when k is its first (layer.h).
 */
static int fused_n(const struct qf_layer_map *m, const struct qf_tf_config *c,
		   int k)
{
	int64_t r0, rows;
	const char *t = qf_tf_linear_tensor(c, k, &r0, &rows);
	int n = 1;

	while (k + n < QF_TF_NLINEAR && m->lin_group[k + n] < 0 &&
	       !strcmp(t, qf_tf_linear_tensor(c, k + n, &r0, &rows)))
		n++;
	return n;
}

/* The group holding linear k's rows (-1: kept in the source dtype). */
static int group_of(const struct qf_layer_map *m, const struct qf_tf_config *c,
		    int k)
{
	int j;

	for (j = k; j > 0 && m->lin_group[j] < 0; j--)
		if (j - 1 + fused_n(m, c, j - 1) <= k)
			break;
	return m->lin_group[j];
}

/*
 * Emit the group of linear k (its first) from cd: k's codes, or a
 * fused tensor's linears' codes stacked row block after row block.
 */
static int emit_codes(const struct qf_layer_map *m,
		      const struct qf_tf_config *c, int k,
		      const struct codes *cd, struct qf_layer_res *r)
{
	const struct qf_vgroup *g = &m->v->g[m->lin_group[k]];
	int64_t in = g->w->t->shape[1], ng = qf_ngroups(in, g->qp.group);
	int64_t out = g->w->t->shape[0], at = 0, o;
	int n = fused_n(m, c, k), i, ret;
	struct codes cat;

	if (n == 1)
		return emit_group(m->v, m->lin_group[k], cd->q[k], cd->sc[k],
				  cd->z[k], r);
	memset(&cat, 0, sizeof(cat));
	ret = codes_alloc(&cat, 0, out, g);
	for (i = 0; i < n && !ret; i++, at += o) {
		o = qf_tf_linear_out(c, k + i);
		memcpy(cat.q[0] + at * in, cd->q[k + i], (size_t)(o * in));
		memcpy(cat.sc[0] + at * ng, cd->sc[k + i],
		       (size_t)(o * ng) * sizeof(uint16_t));
		memcpy(cat.z[0] + at * ng, cd->z[k + i],
		       (size_t)(o * ng) * sizeof(int32_t));
	}
	if (!ret)
		ret = emit_group(m->v, m->lin_group[k], cat.q[0], cat.sc[0],
				 cat.z[0], r);
	codes_free(&cat);
	return ret;
}

/* A fused group's loss: its linears' losses weighted by their rows. */
static double fused_loss(const struct qf_layer_map *m,
			 const struct qf_tf_config *c, int k,
			 const struct qf_awq_layer_res *res, bool rtn)
{
	double sum = 0, rows = 0;
	int i, n = fused_n(m, c, k);

	for (i = k; i < k + n; i++) {
		double o = (double)qf_tf_linear_out(c, i);

		sum += o * (rtn ? res->lin[i].loss_rtn : res->lin[i].loss);
		rows += o;
	}
	return sum / rows;
}

/* AWQ's results of linear k (group gi) into r, and its folded norm. */
static int awq_emit(const struct qf_layer_map *m,
		    const struct qf_tf_config *c, int k, int gi,
		    struct qf_tf_layer *ly, const struct qf_awq_layer_res *res,
		    const struct codes *cd, struct qf_layer_res *r, bool reflip)
{
	const struct qf_variant *v = m->v;
	const struct qf_vgroup *g = &v->g[gi];
	void **bufs = r->pending + (size_t)gi * 4;
	int ret;

	ret = emit_codes(m, c, k, cd, r);
	if (ret < 0)
		return ret;
	if (g->norm) {
		const struct qf_vtensor *nt = &v->t[g->first + g->n - 1];
		float *norm = k == QF_TF_Q ? ly->in_norm : ly->post_norm;

		/* the layer goes on with the norm as stored, as a
		 * loader (and a resumed job) will see it */
		qf_layer_store(nt, norm, c->norm_plus1 ? 1.0f : 0.0f,
			   bufs[g->n - 1]);
	}
	r->loss[gi] = fused_loss(m, c, k, res, false);
	r->loss_rtn[gi] = fused_loss(m, c, k, res, true);
	r->alpha[gi] = res->lin[k].alpha;
	r->score[2 * gi] = k == QF_TF_Q && reflip ? res->score_before : -1;
	r->score[2 * gi + 1] = k == QF_TF_Q && reflip ? res->score_after : -1;
	return 0;
}

int qf_layer_awq(const struct qf_layer_map *m, const struct qf_tf_config *c,
		 struct qf_tf_layer *ly, const enum qf_tf_linear *lin, int n,
		 struct qf_lin_stats *stats, struct qf_layer_res *r,
		 struct qf_layer_reflip *rf)
{
	const struct qf_variant *v = m->v;
	const struct qf_spec *s = &v->spec;
	struct qf_awq_layer_opts lo = {
		.l2 = s->flags & QF_SPEC_L2,
		.reflip = s->flags & QF_SPEC_REFLIP,
		.part = n == QF_TF_NLINEAR ? QF_AWQ_ALL :
			n == 1 && lin[0] == QF_TF_DOWN ? QF_AWQ_DOWN :
			QF_AWQ_REST,
	};
	struct qf_awq_layer_res res;
	struct qf_awq_opts o;
	struct codes cd;
	bool mine[QF_TF_NLINEAR] = { false };
	int k, ret = 0;

	memset(&res, 0, sizeof(res));
	res.t = r->at;
	res.s_down = r->awq_s_down;
	memset(&cd, 0, sizeof(cd));
	memset(rf, 0, sizeof(*rf));
	for (k = 0; k < n; k++)
		mine[lin[k]] = true;
	qf_awq_defaults(&o, s->bits, s->group < 0 ? INT32_MAX : s->group);
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = group_of(m, c, k);
		const struct qf_vgroup *g = gi >= 0 ? &v->g[gi] : NULL;

		lo.quantize[k] = g != NULL;
		if (!g || !mine[k])
			continue;
		ret = codes_alloc(&cd, k, qf_tf_linear_out(c, k), g);
		res.lin[k].q = cd.q[k];
		res.lin[k].sc = cd.sc[k];
		res.lin[k].zero = cd.z[k];
		if (k == QF_TF_Q && m->lin_group[k] >= 0)
			lo.fold_in = g->norm != NULL;
		if (k == QF_TF_GATE && m->lin_group[k] >= 0)
			lo.fold_post = g->norm != NULL;
	}
	if (!ret)
		ret = qf_awq_layer(c, ly, stats, &o, &lo, &res);
	r->at = res.t;		/* (qf_awq_layer adds to what it is given) */
	r->awq_s_down = res.s_down;
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++)
		if (mine[k] && m->lin_group[k] >= 0)
			ret = awq_emit(m, c, k, m->lin_group[k], ly, &res, &cd,
				       r, lo.reflip);
	if (lo.part != QF_AWQ_DOWN) {
		rf->on = lo.reflip;
		rf->before = res.score_before;
		rf->after = res.score_after;
		rf->flips = res.reflips;
	}
	codes_free(&cd);
	return ret;
}

/*
 * A MoE layer's experts (m->exp_group): the qparams and code buffers of
 * every expert linear with a group, then the emitted codes of each, with
 * the block's relative output errors as their losses.  init / emit
 * return 0 or -ENOMEM; free accepts a zeroed or failed struct.
 */
struct brecq_moe {
	struct qf_brecq_experts ex;	/* what qf_brecq_block fills */
	struct qf_qparams *qp;		/* [n] (ex's arrays, owned) */
	int64_t *tokens;		/* [nw] */
	int n;				/* nw * QF_MOE_NLINEAR */
};

static int brecq_moe_init(const struct qf_variant *v,
			  const struct qf_tf_config *c, const int *exp_group,
			  struct brecq_moe *bm)
{
	int nw = c->experts + (c->shared_inter > 0), k;

	memset(bm, 0, sizeof(*bm));
	bm->n = nw * QF_MOE_NLINEAR;
	bm->qp = calloc((size_t)bm->n, sizeof(*bm->qp));
	bm->tokens = calloc((size_t)nw, sizeof(*bm->tokens));
	bm->ex.q = calloc((size_t)bm->n, sizeof(*bm->ex.q));
	bm->ex.scale_f16 = calloc((size_t)bm->n, sizeof(*bm->ex.scale_f16));
	bm->ex.zero = calloc((size_t)bm->n, sizeof(*bm->ex.zero));
	if (!bm->qp || !bm->tokens || !bm->ex.q || !bm->ex.scale_f16 ||
	    !bm->ex.zero)
		return -ENOMEM;
	bm->ex.qp = bm->qp;
	bm->ex.tokens = bm->tokens;
	for (k = 0; k < bm->n; k++) {
		const struct qf_vgroup *g;
		size_t out, in, ng;

		bm->qp[k].bits = 16;
		if (exp_group[k] < 0)
			continue;
		g = &v->g[exp_group[k]];
		bm->qp[k] = g->qp;
		out = (size_t)g->w->t->shape[0];
		in = (size_t)g->w->t->shape[1];
		ng = (size_t)qf_ngroups((int64_t)in, g->qp.group);
		bm->ex.q[k] = malloc(out * in);
		bm->ex.scale_f16[k] = malloc(out * ng * sizeof(uint16_t));
		bm->ex.zero[k] = malloc(out * ng * sizeof(int32_t));
		if (!bm->ex.q[k] || !bm->ex.scale_f16[k] || !bm->ex.zero[k])
			return -ENOMEM;
	}
	return 0;
}

static int brecq_moe_emit(const struct qf_layer_map *m,
			  const struct brecq_moe *bm, double rel,
			  double rel_rtn, struct qf_layer_res *r)
{
	int k, gi, ret = 0;

	for (k = 0; k < bm->n && !ret; k++) {
		if ((gi = m->exp_group[k]) < 0)
			continue;
		ret = emit_group(m->v, gi, bm->ex.q[k], bm->ex.scale_f16[k],
				    bm->ex.zero[k], r);
		r->loss[gi] = rel;
		r->loss_rtn[gi] = rel_rtn;
		r->alpha[gi] = r->score[2 * gi] = r->score[2 * gi + 1] = -1;
		if (m->tokens)
			m->tokens[gi] = (double)bm->tokens[k / QF_MOE_NLINEAR];
	}
	return ret;
}

static void brecq_moe_free(struct brecq_moe *bm)
{
	int k;

	for (k = 0; k < bm->n; k++) {
		free(bm->ex.q ? bm->ex.q[k] : NULL);
		free(bm->ex.scale_f16 ? bm->ex.scale_f16[k] : NULL);
		free(bm->ex.zero ? bm->ex.zero[k] : NULL);
	}
	free(bm->ex.q);
	free(bm->ex.scale_f16);
	free(bm->ex.zero);
	free(bm->qp);
	free(bm->tokens);
	memset(bm, 0, sizeof(*bm));
}

/* Mean y^2 over the set, a sequence at a time. */
static int mean_square(const struct qf_tf_seqs *y, int nseq, double *ey)
{
	float *buf = malloc(sizeof(float) * (size_t)y->row);
	double sum = 0;
	int s0, ret = buf ? 0 : -ENOMEM;
	int64_t i;

	for (s0 = 0; s0 < nseq && !ret; s0++) {
		ret = qf_tf_seqs_read(y, s0, 1, buf);
		for (i = 0; i < y->row && !ret; i++)
			sum += (double)buf[i] * buf[i];
	}
	free(buf);
	*ey = sum / ((double)nseq * y->row);
	return ret;
}

int qf_layer_brecq(const struct qf_layer_map *m, const struct qf_tf_config *c,
		   int l, struct qf_tf_layer *ly, const struct qf_tf_seqs *x,
		   const struct qf_tf_seqs *y, int nseq, int seqlen,
		   struct qf_brecq_opts *o, struct qf_layer_res *r,
		   struct qf_layer_brecq *info)
{
	const struct qf_variant *v = m->v;
	struct qf_brecq_result res = { 0 };
	struct brecq_moe bm;
	struct codes cd;
	double ey = 0;
	int k, ret = 0;

	memset(&cd, 0, sizeof(cd));
	memset(&bm, 0, sizeof(bm));
	o->moe = NULL;
	if (ly->moe && m->exp_group) {
		ret = brecq_moe_init(v, c, m->exp_group, &bm);
		o->moe = &bm.ex;
	}
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = group_of(m, c, k);

		if (gi < 0) {
			o->qp[k].bits = 16;	/* kept in the source dtype */
			continue;
		}
		o->qp[k] = v->g[gi].qp;
		ret = codes_alloc(&cd, k, qf_tf_linear_out(c, k), &v->g[gi]);
	}
	if (!ret)
		ret = qf_brecq_block(c, l, ly, x, y, nseq, seqlen, o, cd.q,
				     cd.sc, cd.z, &res);
	if (!ret)
		ret = mean_square(y, nseq, &ey);
	for (k = 0; k < QF_TF_NLINEAR && !ret; k++) {
		int gi = m->lin_group[k];

		if (gi < 0)
			continue;
		ret = emit_codes(m, c, k, &cd, r);
		if (ret < 0)
			break;
		/* the block's relative output error, for each of its linears */
		r->loss[gi] = ey > 0 ? res.mse_final / ey : 0;
		r->loss_rtn[gi] = ey > 0 ? res.mse_rtn / ey : 0;
		r->alpha[gi] = r->score[2 * gi] = r->score[2 * gi + 1] = -1;
	}
	if (!ret && o->moe)
		ret = brecq_moe_emit(m, &bm, ey > 0 ? res.mse_final / ey : 0,
				     ey > 0 ? res.mse_rtn / ey : 0, r);
	o->moe = NULL;
	brecq_moe_free(&bm);
	info->rel_rtn = ey > 0 ? res.mse_rtn / ey : 0;
	info->rel_final = ey > 0 ? res.mse_final / ey : 0;
	info->iters = res.iters;
	info->seconds = res.seconds;
	info->step_seconds = res.step_seconds;
	info->spilled = res.spilled;
	codes_free(&cd);
	return ret;
}
