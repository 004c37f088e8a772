/*
 * sample.c - data-free calibration: token sequences sampled from the
 * model itself (temperature 1, starting from BOS, a fixed seed), decoded
 * step by step with a key/value cache.
 *
 * Unlike the calibration driver this holds every layer's fp32 weights at
 * once (decoding visits all layers per token); for models too large for
 * that, calibrate from a text file (-o calib=FILE).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "tf_kernels.h"
#include "tf_moe.h"

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* rotate_half RoPE of nh heads at one position (its table rows). */
static void rope_one(const struct qf_tf_config *c, float *v, int nh,
		     const float *cs, const float *sn)
{
	qf_tf_rope_rot(v, 1, nh, c->head_dim, qf_tf_rot_dim(c), 1, cs, sn,
		       false);
}

struct decoder {
	const struct qf_tf_config *c;
	struct qf_tf_layer *ly;		/* [layers] */
	float *kc, *vc;			/* [layers, nseq, seqlen, kvh * hd] */
	/* [2, seqlen, hd / 2]: global layers', then sliding layers' (gemma
	 * 3 gives them their own rope base) */
	float *cs, *sn;
	int nseq, seqlen;
};

/* Attention of query qv at position p over keys [first, p] of K, V. */
static void attend_one(const struct qf_tf_config *c, const float *qv,
		       const float *K, const float *V, int kvw, int first,
		       int p, float *att, float *o)
{
	int hd = c->head_dim, i, j;
	float mx = -INFINITY, sum = 0;

	for (j = first; j <= p; j++) {
		float a = 0;

		for (i = 0; i < hd; i++)
			a += qv[i] * K[(size_t)j * kvw + i];
		att[j] = c->attn_scale > 0 ? a * c->attn_scale :
			 a / sqrtf((float)hd);
	}
	qf_tf_softcap(att + first, p + 1 - first, c->attn_softcap);
	for (j = first; j <= p; j++)
		mx = att[j] > mx ? att[j] : mx;
	for (j = first; j <= p; j++) {
		att[j] = expf(att[j] - mx);
		sum += att[j];
	}
	memset(o, 0, (size_t)hd * sizeof(*o));
	for (j = first; j <= p; j++)
		for (i = 0; i < hd; i++)
			o[i] += att[j] / sum * V[(size_t)j * kvw + i];
}

/*
 * One decoding step at position p: x [nseq, hidden] in place.  OLMoE's
 * q/k norms span the whole projection (full) and q/k/v are clamped; a
 * MoE block is nn's.  Returns 0 or -ENOMEM.
 */
static int step(struct decoder *d, float *x, int p, float *h, float *q,
		float *g, float *u, float *att)
{
	const struct qf_tf_config *c = d->c;
	int hd = c->head_dim, kvw = c->kv_heads * hd, qw = c->heads * hd;
	int grp = c->heads / c->kv_heads;
	bool full = qf_tf_flags(c) & QF_ARCH_QK_NORM_FULL;
	int l, s, hh, ret;

	for (l = 0; l < c->layers; l++) {
		const struct qf_tf_layer *ly = &d->ly[l];
		size_t base = (size_t)l * d->nseq * d->seqlen * kvw;
		/* (Mistral's window is not applied here: its sampled sets
		 * stay as they were) */
		bool slides = c->window_per_layer && qf_tf_layer_slides(c, l);
		size_t tab = slides ? (size_t)d->seqlen * hd / 2 : 0;
		const float *cs = d->cs + tab + (size_t)p * hd / 2;
		const float *sn = d->sn + tab + (size_t)p * hd / 2;
		int first = slides && p >= c->sliding_window ?
			    p - c->sliding_window + 1 : 0;

		qf_tf_rmsnorm(x, ly->in_norm, d->nseq, c->hidden, c->rms_eps,
			      h);
		qf_tf_linear_run(h, d->nseq, c->hidden, ly->w[QF_TF_Q],
				 ly->b[QF_TF_Q], qw, 0, q);
		for (s = 0; s < d->nseq; s++) {
			float *kd = d->kc + base + ((size_t)s * d->seqlen + p) * kvw;
			float *vd = d->vc + base + ((size_t)s * d->seqlen + p) * kvw;

			qf_tf_linear_run(h + (size_t)s * c->hidden, 1, c->hidden,
					 ly->w[QF_TF_K], ly->b[QF_TF_K], kvw, 0,
					 kd);
			qf_tf_linear_run(h + (size_t)s * c->hidden, 1, c->hidden,
					 ly->w[QF_TF_V], ly->b[QF_TF_V], kvw, 0,
					 vd);
			if (ly->k_norm)
				qf_tf_rmsnorm(kd, ly->k_norm,
					      full ? 1 : c->kv_heads,
					      full ? kvw : hd, c->rms_eps, kd);
			if (c->clip_qkv > 0) {
				qf_tf_clamp(kd, kvw, c->clip_qkv);
				qf_tf_clamp(vd, kvw, c->clip_qkv);
			}
			rope_one(c, kd, c->kv_heads, cs, sn);
		}
		if (ly->q_norm)
			qf_tf_rmsnorm(q, ly->q_norm, (int64_t)d->nseq *
				      (full ? 1 : c->heads), full ? qw : hd,
				      c->rms_eps, q);
		if (c->clip_qkv > 0)
			qf_tf_clamp(q, (int64_t)d->nseq * qw, c->clip_qkv);
		for (s = 0; s < d->nseq; s++)
			rope_one(c, q + (size_t)s * qw, c->heads, cs, sn);
		/* attention of position p over its window, per sequence and
		 * head */
		for (s = 0; s < d->nseq; s++)
			for (hh = 0; hh < c->heads; hh++) {
				size_t kv0 = base + (size_t)s * d->seqlen * kvw +
					     (size_t)(hh / grp) * hd;

				attend_one(c, q + (size_t)s * qw + hh * hd,
					   d->kc + kv0, d->vc + kv0, kvw, first,
					   p, att, g + (size_t)s * qw + hh * hd);
			}
		qf_tf_out_add(c, ly->attn_out_norm, g, d->nseq, qw,
			      ly->w[QF_TF_O], ly->b[QF_TF_O], h, x);
		qf_tf_rmsnorm(x, ly->post_norm, d->nseq, c->hidden, c->rms_eps,
			      h);
		if (ly->moe) {
			ret = qf_tf_moe_forward(c, ly->moe, l, h, d->nseq, x,
						NULL, NULL);
			if (ret)
				return ret;
			continue;
		}
		qf_tf_linear_run(h, d->nseq, c->hidden, ly->w[QF_TF_GATE],
				 ly->b[QF_TF_GATE], c->inter, 0, g);
		qf_tf_linear_run(h, d->nseq, c->hidden, ly->w[QF_TF_UP],
				 ly->b[QF_TF_UP], c->inter, 0, u);
		qf_tf_glu(c, g, u, (int64_t)d->nseq * c->inter);
		qf_tf_out_add(c, ly->mlp_out_norm, g, d->nseq, c->inter,
			      ly->w[QF_TF_DOWN], ly->b[QF_TF_DOWN], h, x);
	}
	return 0;
}

static int32_t draw(const float *logits, int vocab, uint64_t *rng)
{
	double mx = logits[0], sum = 0, r;
	int j;

	for (j = 1; j < vocab; j++)
		mx = logits[j] > mx ? logits[j] : mx;
	for (j = 0; j < vocab; j++)
		sum += exp((double)logits[j] - mx);
	r = (double)(splitmix(rng) >> 11) * 0x1.0p-53 * sum;
	for (j = 0; j < vocab - 1; j++) {
		r -= exp((double)logits[j] - mx);
		if (r < 0)
			break;
	}
	return j;
}

/* d.cs / d.sn: global layers' rope, then sliding layers'. */
static void rope_tables(const struct qf_tf_config *c, int seqlen, float *cs,
			float *sn)
{
	size_t half = (size_t)seqlen * c->head_dim / 2;
	struct qf_tf_config lc;
	int l;

	qf_tf_rope_table(c, seqlen, cs, sn);
	memcpy(cs + half, cs, half * sizeof(*cs));
	memcpy(sn + half, sn, half * sizeof(*sn));
	for (l = 0; l < c->layers; l++)
		if (qf_tf_layer_slides(c, l)) {
			qf_tf_config_layer(c, l, &lc);
			qf_tf_rope_table(&lc, seqlen, cs + half, sn + half);
			break;
		}
	for (l = 0; l < c->layers; l++)
		if (!qf_tf_layer_slides(c, l)) {
			qf_tf_config_layer(c, l, &lc);
			qf_tf_rope_table(&lc, seqlen, cs, sn);
			break;
		}
}

int qf_calib_sample(const struct qf_model *m, const struct qf_tf_config *c,
		    int32_t bos, int nseq, int seqlen, uint64_t seed,
		    struct qf_calib *out)
{
	struct decoder d = { c, NULL, NULL, NULL, NULL, NULL, nseq, seqlen };
	int wide = c->inter > c->heads * c->head_dim ? c->inter :
						     c->heads * c->head_dim;
	float *x = NULL, *h = NULL, *q = NULL, *g = NULL, *u = NULL;
	float *att = NULL, *lg = NULL;
	size_t kv = (size_t)c->layers * nseq * seqlen * c->kv_heads *
		    c->head_dim;
	uint64_t rng = seed;
	int l, p, s, nl = 0, ret = 0;

	memset(out, 0, sizeof(*out));
	if (nseq < 1 || seqlen < 2 || bos < 0 || bos >= c->vocab)
		return -EINVAL;
	out->ids = malloc((size_t)nseq * seqlen * sizeof(*out->ids));
	d.ly = calloc((size_t)c->layers, sizeof(*d.ly));
	d.kc = malloc(kv * sizeof(float));
	d.vc = malloc(kv * sizeof(float));
	d.cs = malloc((size_t)seqlen * c->head_dim * sizeof(float));
	d.sn = malloc((size_t)seqlen * c->head_dim * sizeof(float));
	x = malloc((size_t)nseq * c->hidden * sizeof(*x));
	h = malloc((size_t)nseq * c->hidden * sizeof(*h));
	q = malloc((size_t)nseq * c->heads * c->head_dim * sizeof(*q));
	g = malloc((size_t)nseq * wide * sizeof(*g));
	u = malloc((size_t)nseq * c->inter * sizeof(*u));
	att = malloc((size_t)seqlen * sizeof(*att));
	lg = malloc((size_t)nseq * c->vocab * sizeof(*lg));
	if (!out->ids || !d.ly || !d.kc || !d.vc || !d.cs || !d.sn || !x ||
	    !h || !q || !g || !u || !att || !lg) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (l = 0; l < c->layers && !ret; l++, nl++)
		ret = qf_tf_layer_load(m, c, l, &d.ly[l]);
	if (ret < 0)
		goto out_free;
	rope_tables(c, seqlen, d.cs, d.sn);
	for (s = 0; s < nseq; s++)
		out->ids[(size_t)s * seqlen] = bos;
	for (p = 0; p + 1 < seqlen && !ret; p++) {
		int32_t tok[64];
		int k;

		for (s = 0; s < nseq; s += k) {
			k = nseq - s < 64 ? nseq - s : 64;
			for (l = 0; l < k; l++)
				tok[l] = out->ids[(size_t)(s + l) * seqlen + p];
			ret = qf_tf_embed(m, c, tok, k,
					  x + (size_t)s * c->hidden);
			if (ret < 0)
				goto out_free;
		}
		ret = step(&d, x, p, h, q, g, u, att);
		if (!ret)
			ret = qf_tf_head(m, c, x, nseq, lg);
		for (s = 0; s < nseq && !ret; s++)
			out->ids[(size_t)s * seqlen + p + 1] =
				draw(lg + (size_t)s * c->vocab, c->vocab, &rng);
	}
	if (ret < 0)
		goto out_free;
	out->nseq = nseq;
	out->seqlen = seqlen;
	snprintf(out->source, sizeof(out->source), "sampled:seed=%llu",
		 (unsigned long long)seed);
	qf_calib_hash(out);
out_free:
	for (l = 0; l < nl; l++)
		qf_tf_layer_free(&d.ly[l]);
	free(d.ly);
	free(d.kc);
	free(d.vc);
	free(d.cs);
	free(d.sn);
	free(x);
	free(h);
	free(q);
	free(g);
	free(u);
	free(att);
	free(lg);
	if (ret < 0)
		qf_calib_free(out);
	return ret;
}
