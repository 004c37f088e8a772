/*
 * tf_backward.c - one decoder block's forward with saved activations and
 * its backward to the seven linear weights (for BRECQ, brecq.c).
 *
 * The forward reuses the kernels of tf_kernels.c, so it computes what
 * qf_tf_layer_forward computes.  The backward is written out by hand:
 *
 *   y   = h1 + down(a),  a = silu(g) * u,  g/u = gate/up(xn2)
 *   xn2 = rmsnorm(h1),   h1 = x + o_proj(attn(rope(norm(q)), ...))
 *
 * Gemma's block differs in the terms its config gives: down(a) and
 * o_proj(..) pass their own RMSNorm before the residual adds (sandwich),
 * a = gelu_tanh(g) * u, and the attention scores are soft-capped.
 *
 * dW = dY^T X for every linear, all on SGEMM.  Attention probabilities
 * are recomputed per block of QF_TF_BQ query rows from the saved q and k
 * (FlashAttention's trick, without the tiling over keys): memory stays
 * (QF_TF_BQ, seqlen) per call instead of (heads, seqlen, seqlen).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "tf_backward.h"
#include "tf_kernels.h"
#include "tf_moe.h"

/* Keys of query block [r0, r1): [lo, r1) (as tf_kernels.c). */
static int block_lo(int r0, int window)
{
	int lo = window > 0 ? r0 - window + 1 : 0;

	return lo > 0 ? lo : 0;
}

int qf_tf_saved_init(const struct qf_tf_config *c, int nseq, int seqlen,
		     struct qf_tf_saved *s)
{
	int64_t ntok = (int64_t)nseq * seqlen;
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	int64_t hid = c->hidden;
	int64_t half = c->head_dim / 2;
	int64_t nqk = c->qk_norm ? qd + kvd : 0;
	int64_t nsw = c->sandwich ? 2 * hid : 0;	/* op, dn */
	size_t n;
	float *p;

	memset(s, 0, sizeof(*s));
	if (nseq <= 0 || seqlen <= 0 || ntok > INT32_MAX)
		return -EINVAL;
	/* xn qp kp q k v o h1 xn2 g u a | da du dh dq dk dv */
	n = (size_t)(ntok * (3 * hid + nsw + nqk + 2 * qd + 2 * kvd +
			     3 * (int64_t)c->inter) +
		     ntok * (2 * (int64_t)c->inter + hid + qd + 2 * kvd) +
		     2 * (int64_t)QF_TF_BQ * seqlen + 2 * seqlen * half);
	p = malloc(n * sizeof(float));
	if (!p)
		return -ENOMEM;
	s->mem = p;
	s->nseq = nseq;
	s->seqlen = seqlen;
	s->ntok = ntok;
	s->window = c->sliding_window > 0 && c->sliding_window < seqlen ?
		    c->sliding_window : 0;
#define TAKE(field, count)                                                   \
	do {                                                                 \
		s->field = p;                                                \
		p += (count);                                                \
	} while (0)
	TAKE(xn, ntok * hid);
	if (c->qk_norm) {
		TAKE(qp, ntok * qd);
		TAKE(kp, ntok * kvd);
	}
	TAKE(q, ntok * qd);
	TAKE(k, ntok * kvd);
	TAKE(v, ntok * kvd);
	TAKE(o, ntok * qd);
	if (c->sandwich) {
		TAKE(op, ntok * hid);
		TAKE(dn, ntok * hid);
	}
	TAKE(h1, ntok * hid);
	TAKE(xn2, ntok * hid);
	TAKE(g, ntok * c->inter);
	TAKE(u, ntok * c->inter);
	TAKE(a, ntok * c->inter);
	TAKE(da, ntok * c->inter);
	TAKE(du, ntok * c->inter);
	TAKE(dh, ntok * hid);
	TAKE(dq, ntok * qd);
	TAKE(dk, ntok * kvd);
	TAKE(dv, ntok * kvd);
	TAKE(s, (int64_t)QF_TF_BQ * seqlen);
	TAKE(ds, (int64_t)QF_TF_BQ * seqlen);
	TAKE(cs, seqlen * half);
	TAKE(sn, seqlen * half);
#undef TAKE
	qf_tf_rope_table(c, seqlen, s->cs, s->sn);
	return 0;
}

void qf_tf_saved_free(struct qf_tf_saved *s)
{
	if (!s)
		return;
	free(s->mem);
	memset(s, 0, sizeof(*s));
}

/*
 * x += a W^T (+ b), through the sandwich norm when there is one (gemma),
 * keeping a W^T + b in pre for the backward; tmp (T, hidden) scratch.
 */
static void sandwich_add(const struct qf_tf_config *c, const float *norm,
			 const float *a, int64_t T, int64_t in,
			 const float *w, const float *b, float *pre,
			 float *tmp, float *x)
{
	int64_t i;

	if (!norm || !pre) {
		qf_tf_linear_run(a, T, in, w, b, c->hidden, 1.0f, x);
		return;
	}
	qf_tf_linear_run(a, T, in, w, b, c->hidden, 0.0f, pre);
	qf_tf_rmsnorm(pre, norm, T, c->hidden, c->rms_eps, tmp);
	for (i = 0; i < T * c->hidden; i++)
		x[i] += tmp[i];
}

int qf_tf_block_forward(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, const float *x,
			float *y, struct qf_tf_saved *s)
{
	int64_t T = s->ntok;
	int64_t hid = c->hidden;
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	bool qn = ly->q_norm && s->qp;
	bool kn = ly->k_norm && s->kp;
	float *qdst = qn ? s->qp : s->q;
	float *kdst = kn ? s->kp : s->k;

	qf_tf_rmsnorm(x, ly->in_norm, T, hid, c->rms_eps, s->xn);
	qf_tf_linear_run(s->xn, T, hid, ly->w[QF_TF_Q], ly->b[QF_TF_Q], qd,
			 0.0f, qdst);
	qf_tf_linear_run(s->xn, T, hid, ly->w[QF_TF_K], ly->b[QF_TF_K], kvd,
			 0.0f, kdst);
	qf_tf_linear_run(s->xn, T, hid, ly->w[QF_TF_V], ly->b[QF_TF_V], kvd,
			 0.0f, s->v);
	if (qn)
		qf_tf_rmsnorm(s->qp, ly->q_norm, T * c->heads, c->head_dim,
			      c->rms_eps, s->q);
	if (kn)
		qf_tf_rmsnorm(s->kp, ly->k_norm, T * c->kv_heads, c->head_dim,
			      c->rms_eps, s->k);
	qf_tf_rope_rot(s->q, T, c->heads, c->head_dim, qf_tf_rot_dim(c),
		       s->seqlen, s->cs, s->sn, false);
	qf_tf_rope_rot(s->k, T, c->kv_heads, c->head_dim, qf_tf_rot_dim(c),
		       s->seqlen, s->cs, s->sn, false);
	memcpy(s->o, s->q, sizeof(float) * (size_t)(T * qd));
	qf_tf_attention(c, s->o, s->k, s->v, s->nseq, s->seqlen, s->window,
			s->s);
	memcpy(s->h1, x, sizeof(float) * (size_t)(T * hid));
	sandwich_add(c, ly->attn_out_norm, s->o, T, qd, ly->w[QF_TF_O],
		     ly->b[QF_TF_O], s->op, s->dh, s->h1);

	qf_tf_rmsnorm(s->h1, ly->post_norm, T, hid, c->rms_eps, s->xn2);
	memcpy(y, s->h1, sizeof(float) * (size_t)(T * hid));
	if (ly->moe)
		return qf_tf_moe_forward_routed(c, ly->moe, s->xn2, T, s->sel,
						s->p, y);
	qf_tf_linear_run(s->xn2, T, hid, ly->w[QF_TF_GATE],
			 ly->b[QF_TF_GATE], c->inter, 0.0f, s->g);
	qf_tf_linear_run(s->xn2, T, hid, ly->w[QF_TF_UP], ly->b[QF_TF_UP],
			 c->inter, 0.0f, s->u);
	memcpy(s->a, s->g, sizeof(float) * (size_t)(T * c->inter));
	qf_tf_glu(c, s->a, s->u, T * c->inter);
	sandwich_add(c, ly->mlp_out_norm, s->a, T, c->inter,
		     ly->w[QF_TF_DOWN], ly->b[QF_TF_DOWN], s->dn, s->dh, y);
	return 0;
}

/* dw (out, in) = dy^T x for dy (T, out), x (T, in); skipped when NULL. */
static void weight_grad(float *dw, const float *dy, const float *x,
			int64_t T, int64_t out, int64_t in)
{
	if (dw)
		qf_sgemm(true, false, out, in, T, 1.0f, dy, out, x, in, 0.0f,
			 dw, in);
}

/* dw[l] is complete and linear l's weights no longer read: s->dw_done. */
static int done(struct qf_tf_saved *s, int l, float *const dw[QF_TF_NLINEAR])
{
	return dw[l] && s->dw_done ? s->dw_done(s->dw_arg, l, dw[l]) : 0;
}

/* The MLP half: dw of down, gate, up; s->dh = dL/dxn2. */
static int mlp_backward(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, struct qf_tf_saved *s,
			const float *dy, float *const dw[QF_TF_NLINEAR])
{
	int64_t T = s->ntok;
	int64_t hid = c->hidden;
	int64_t inter = c->inter;
	int ret;

	if (ly->mlp_out_norm && s->dn) {	/* dL/d(down out), in dh */
		qf_tf_rmsnorm_bwd(s->dn, ly->mlp_out_norm, T, hid, c->rms_eps,
				  dy, s->dh);
		dy = s->dh;
	}
	weight_grad(dw[QF_TF_DOWN], dy, s->a, T, hid, inter);
	qf_sgemm(false, false, T, inter, hid, 1.0f, dy, hid,
		 ly->w[QF_TF_DOWN], inter, 0.0f, s->da, inter);
	if ((ret = done(s, QF_TF_DOWN, dw)))
		return ret;
	if (c->act == QF_ACT_GELU_TANH)
		qf_tf_geglu_bwd(s->g, s->u, s->da, s->da, s->du, T * inter);
	else
		qf_tf_swiglu_bwd(s->g, s->u, s->da, s->da, s->du, T * inter);
	weight_grad(dw[QF_TF_GATE], s->da, s->xn2, T, inter, hid);
	qf_sgemm(false, false, T, hid, inter, 1.0f, s->da, inter,
		 ly->w[QF_TF_GATE], hid, 0.0f, s->dh, hid);
	if ((ret = done(s, QF_TF_GATE, dw)))
		return ret;
	weight_grad(dw[QF_TF_UP], s->du, s->xn2, T, inter, hid);
	qf_sgemm(false, false, T, hid, inter, 1.0f, s->du, inter,
		 ly->w[QF_TF_UP], hid, 1.0f, s->dh, hid);
	return done(s, QF_TF_UP, dw);
}

int qf_tf_block_backward(const struct qf_tf_config *c,
			 const struct qf_tf_layer *ly, struct qf_tf_saved *s,
			 const float *dy, float *const dw[QF_TF_NLINEAR])
{
	int64_t T = s->ntok;
	int64_t hid = c->hidden;
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	bool qn = ly->q_norm && s->qp;
	bool kn = ly->k_norm && s->kp;
	int64_t i;
	int ret;

	if (!ly->moe)
		ret = mlp_backward(c, ly, s, dy, dw);
	else
		ret = qf_tf_moe_backward(c, ly->moe, s->xn2, T, s->sel, s->p,
					 dy, s->dwe, s->dh);
	if (ret)
		return ret;
	if (!dw[QF_TF_Q] && !dw[QF_TF_K] && !dw[QF_TF_V] && !dw[QF_TF_O])
		return 0;
	/* dh1 = dy + rmsnorm'(dxn2): the residual and the MLP branch */
	qf_tf_rmsnorm_bwd(s->h1, ly->post_norm, T, hid, c->rms_eps, s->dh,
			  s->dh);
	for (i = 0; i < T * hid; i++)
		s->dh[i] += dy[i];
	if (ly->attn_out_norm && s->op)	/* dL/d(o_proj out) */
		qf_tf_rmsnorm_bwd(s->op, ly->attn_out_norm, T, hid,
				  c->rms_eps, s->dh, s->dh);
	weight_grad(dw[QF_TF_O], s->dh, s->o, T, hid, qd);
	if (!dw[QF_TF_Q] && !dw[QF_TF_K] && !dw[QF_TF_V])
		return done(s, QF_TF_O, dw);
	qf_sgemm(false, false, T, qd, hid, 1.0f, s->dh, hid, ly->w[QF_TF_O],
		 qd, 0.0f, s->dq, qd);
	if ((ret = done(s, QF_TF_O, dw)))
		return ret;
	qf_tf_attention_bwd(c, s->q, s->k, s->v, s->dq, s->nseq, s->seqlen,
			    s->window, s->dq, s->dk, s->dv, s->s, s->ds);
	weight_grad(dw[QF_TF_V], s->dv, s->xn, T, kvd, hid);
	if ((ret = done(s, QF_TF_V, dw)))
		return ret;
	qf_tf_rope_rot(s->dq, T, c->heads, c->head_dim, qf_tf_rot_dim(c),
		       s->seqlen, s->cs, s->sn, true);
	qf_tf_rope_rot(s->dk, T, c->kv_heads, c->head_dim, qf_tf_rot_dim(c),
		       s->seqlen, s->cs, s->sn, true);
	if (qn)
		qf_tf_rmsnorm_bwd(s->qp, ly->q_norm, T * c->heads, c->head_dim,
				  c->rms_eps, s->dq, s->dq);
	if (kn)
		qf_tf_rmsnorm_bwd(s->kp, ly->k_norm, T * c->kv_heads,
				  c->head_dim, c->rms_eps, s->dk, s->dk);
	weight_grad(dw[QF_TF_Q], s->dq, s->xn, T, qd, hid);
	if ((ret = done(s, QF_TF_Q, dw)))
		return ret;
	weight_grad(dw[QF_TF_K], s->dk, s->xn, T, kvd, hid);
	return done(s, QF_TF_K, dw);
}

/* ------------------------------------------------------------------ */
/* sub-ops                                                            */

void qf_tf_rmsnorm_bwd(const float *x, const float *w, int64_t n, int64_t d,
		       float eps, const float *dy, float *dx)
{
	int64_t i, j;

	for (i = 0; i < n; i++) {
		const float *xr = x + i * d;	/* [d] */
		const float *dyr = dy + i * d;	/* [d] */
		float *dxr = dx + i * d;	/* [d] */
		double ss = 0;
		double dot = 0;
		float r, f;

		for (j = 0; j < d; j++) {
			ss += (double)xr[j] * xr[j];
			dot += (double)dyr[j] * w[j] * xr[j];
		}
		r = (float)(1.0 / sqrt(ss / (double)d + eps));
		/* d(x r)/dx = r I - x x^T r^3 / d */
		f = (float)(dot * r * r * r / (double)d);
		for (j = 0; j < d; j++)
			dxr[j] = r * w[j] * dyr[j] - xr[j] * f;
	}
}

void qf_tf_rope_bwd(float *dx, int64_t ntok, int nh, int hd, int seqlen,
		    const float *cs, const float *sn)
{
	qf_tf_rope_dir(dx, ntok, nh, hd, seqlen, cs, sn, true);
}

/* Softmax of row[a, b), zeros outside (the causal / window mask). */
static inline void softmax_masked(float *row, int a, int b, int nk)
{
	float mx = -INFINITY;
	double sum = 0;
	float inv;
	int j;

	for (j = a; j < b; j++)
		mx = row[j] > mx ? row[j] : mx;
	for (j = a; j < b; j++)
		row[j] = qf_tf_exp_poly(row[j] - mx);
	for (j = a; j < b; j++)
		sum += row[j];
	inv = (float)(1.0 / sum);
	for (j = a; j < b; j++)
		row[j] *= inv;
	memset(row, 0, sizeof(float) * (size_t)a);
	memset(row + b, 0, sizeof(float) * (size_t)(nk - b));
}

/* Row-wise dS = P * (dP - rowsum(P * dP)) of nr rows, after the softmax
 * of P's rows (query i + r0 sees keys [block_lo(i), i]). */
QF_HOT static void softmax_bwd_rows(float *s, float *ds, int nr, int nk,
				    int r0, int lo, int window)
{
	int i, j;

	for (i = 0; i < nr; i++) {
		int pos = r0 + i;
		float *p = s + (int64_t)i * nk;		/* [nk] */
		float *dp = ds + (int64_t)i * nk;	/* [nk] */
		float dot = 0;

		softmax_masked(p, block_lo(pos, window) - lo, pos - lo + 1, nk);
		for (j = 0; j < nk; j++)
			dot += p[j] * dp[j];
		for (j = 0; j < nk; j++)
			dp[j] = p[j] * (dp[j] - dot);
	}
}

/*
 * One (sequence, head, query block): rows [r0, r1) against keys
 * [lo, r1).  qb/dob/dqb point at the block's first row (ld qd), kb/vb/
 * dkb/dvb at key lo (ld kvd).
 */
struct attn_blk {
	int r0, r1, lo, window;
	float cap;			/* score soft-cap, 0 = none */
	const float *qb, *kb, *vb, *dob;
	float *dqb, *dkb, *dvb;
};

/*
 * ds *= d(cap tanh(z / cap))/dz = 1 - tanh(z / cap)^2 at the block's
 * scores z, recomputed into s (P is no longer needed).
 */
static void softcap_bwd(const struct attn_blk *b, int hd, int qd, int kvd,
			float scale, float *s, float *ds)
{
	int64_t n = (int64_t)(b->r1 - b->r0) * (b->r1 - b->lo), i;
	int nk = b->r1 - b->lo;

	qf_sgemm(false, true, b->r1 - b->r0, nk, hd, scale, b->qb, qd, b->kb,
		 kvd, 0.0f, s, nk);
	for (i = 0; i < n; i++) {
		float t = tanhf(s[i] / b->cap);

		ds[i] *= 1.0f - t * t;
	}
}

static void attn_block_bwd(const struct attn_blk *b, int hd, int qd,
			   int kvd, float scale, float *s, float *ds)
{
	int nr = b->r1 - b->r0;
	int nk = b->r1 - b->lo;

	/* P = softmax(scale Q K^T), dP = dO V^T, dS (zero where masked) */
	qf_sgemm(false, true, nr, nk, hd, scale, b->qb, qd, b->kb, kvd, 0.0f,
		 s, nk);
	qf_tf_softcap(s, (int64_t)nr * nk, b->cap);
	qf_sgemm(false, true, nr, nk, hd, 1.0f, b->dob, qd, b->vb, kvd, 0.0f,
		 ds, nk);
	softmax_bwd_rows(s, ds, nr, nk, b->r0, b->lo, b->window);
	/* dV += P^T dO, dK += scale dS^T Q, then dQ = scale dS K */
	qf_sgemm(true, false, nk, hd, nr, 1.0f, s, nk, b->dob, qd, 1.0f,
		 b->dvb, kvd);
	if (b->cap > 0)
		softcap_bwd(b, hd, qd, kvd, scale, s, ds);
	qf_sgemm(true, false, nk, hd, nr, scale, ds, nk, b->qb, qd, 1.0f,
		 b->dkb, kvd);
	qf_sgemm(false, false, nr, hd, nk, scale, ds, nk, b->kb, kvd, 0.0f,
		 b->dqb, qd);
}

void qf_tf_attention_bwd(const struct qf_tf_config *c, const float *q,
			 const float *k, const float *v, const float *dout,
			 int nseq, int seqlen, int window, float *dq,
			 float *dk, float *dv, float *s, float *ds)
{
	int hd = c->head_dim;
	int qd = c->heads * hd;
	int kvd = c->kv_heads * hd;
	int rep = c->heads / c->kv_heads;
	float scale = c->attn_scale > 0 ? c->attn_scale :
		      1.0f / sqrtf((float)hd);
	int64_t T = (int64_t)nseq * seqlen;
	struct attn_blk b;
	int sq, h, r0;

	if (window >= seqlen)
		window = 0;
	memset(dk, 0, sizeof(float) * (size_t)(T * kvd));
	memset(dv, 0, sizeof(float) * (size_t)(T * kvd));
	b.window = window;
	b.cap = c->attn_softcap;
	for (sq = 0; sq < nseq; sq++) {
		int64_t base = (int64_t)sq * seqlen;

		for (h = 0; h < c->heads; h++) {
			int64_t qoff = h * hd;
			int64_t kvoff = (h / rep) * hd;

			for (r0 = 0; r0 < seqlen; r0 += QF_TF_BQ) {
				b.r0 = r0;
				b.r1 = r0 + QF_TF_BQ < seqlen ? r0 + QF_TF_BQ :
				       seqlen;
				b.lo = block_lo(r0, window);
				b.qb = q + (base + r0) * qd + qoff;
				b.dob = dout + (base + r0) * qd + qoff;
				b.dqb = dq + (base + r0) * qd + qoff;
				b.kb = k + (base + b.lo) * kvd + kvoff;
				b.vb = v + (base + b.lo) * kvd + kvoff;
				b.dkb = dk + (base + b.lo) * kvd + kvoff;
				b.dvb = dv + (base + b.lo) * kvd + kvoff;
				attn_block_bwd(&b, hd, qd, kvd, scale, s, ds);
			}
		}
	}
}

void qf_tf_geglu_bwd(const float *g, const float *u, const float *da,
		     float *dg, float *du, int64_t n)
{
	const float k = 0.7978845608028654f;	/* sqrt(2 / pi) */
	int64_t i;

	for (i = 0; i < n; i++) {
		float x = g[i], d = da[i];
		float t = tanhf(k * (x + 0.044715f * x * x * x));
		/* gelu(x) = x (1 + t) / 2, t = tanh(k (x + 0.044715 x^3)) */
		float gl = 0.5f * x * (1.0f + t);
		float dgl = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k *
			    (1.0f + 3.0f * 0.044715f * x * x);

		du[i] = d * gl;
		dg[i] = d * u[i] * dgl;
	}
}

QF_HOT void qf_tf_swiglu_bwd(const float *g, const float *u, const float *da,
			     float *dg, float *du, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++) {
		float sg = 1.0f / (1.0f + qf_tf_exp_poly(-g[i]));
		float d = da[i];

		du[i] = d * g[i] * sg;
		/* silu'(g) = sg (1 + g (1 - sg)) */
		dg[i] = d * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
	}
}
