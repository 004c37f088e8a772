/*
 * dequant.c - read a linear's weight as fp32 whatever form the checkpoint
 * stores it in: a plain "<p>.weight" (F32/F16/BF16), or the GPTQ
 * checkpoint tensors "<p>.qweight/.qzeros/.scales/.g_idx" that quantfs
 * serves, or the AutoAWQ GEMM tensors "<p>.qweight/.qzeros/.scales" (no
 * g_idx), so `quantfs eval` and the forward pass run on a mounted
 * variant directly.  The bits are decoded by unpack.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

static const struct qf_model_tensor *find(const struct qf_model *m,
					  const char *prefix,
					  const char *suffix)
{
	char name[4200];

	if (snprintf(name, sizeof(name), "%s%s", prefix, suffix) >=
	    (int)sizeof(name))
		return NULL;
	return qf_model_find(m, name);
}

static bool shaped(const struct qf_model_tensor *t, enum qf_dtype dt,
		   int ndim, int64_t d0, int64_t d1)
{
	return t && t->t->dtype == dt && t->t->ndim == ndim &&
	       t->t->shape[0] == d0 && (ndim < 2 || t->t->shape[1] == d1);
}

/* dst [out, in] = scale * (q - zero) of the decoded grid. */
static void dequant(const uint8_t *q, const uint16_t *sc, const int32_t *z,
		    const int32_t *g, int64_t out, int64_t in, int64_t ng,
		    float *dst)
{
	int64_t r, j;

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			int64_t k = r * ng + g[j];

			dst[r * in + j] = qf_f16_to_f32(sc[k]) *
					  (float)((int32_t)q[r * in + j] - z[k]);
		}
}

/* The integer grid of a linear's decoded tensors: q, sc, z, g_idx. */
struct grid {
	uint8_t *q;			/* [out, in] */
	uint16_t *sc;			/* [out, ng] */
	int32_t *z;			/* [out, ng] */
	int32_t *g;			/* [in] */
};

static int grid_alloc(struct grid *gr, int64_t out, int64_t in, int64_t ng)
{
	gr->q = malloc((size_t)(out * in));
	gr->sc = malloc((size_t)(out * ng) * sizeof(*gr->sc));
	gr->z = malloc((size_t)(out * ng) * sizeof(*gr->z));
	gr->g = malloc((size_t)in * sizeof(*gr->g));
	return gr->q && gr->sc && gr->z && gr->g ? 0 : -ENOMEM;
}

static void grid_free(struct grid *gr)
{
	free(gr->q);
	free(gr->sc);
	free(gr->z);
	free(gr->g);
}

static int gptq_f32(const struct qf_model *m, const char *prefix, int64_t out,
		    int64_t in, float *dst)
{
	const struct qf_model_tensor *qw = find(m, prefix, ".qweight");
	const struct qf_model_tensor *qz = find(m, prefix, ".qzeros");
	const struct qf_model_tensor *sc = find(m, prefix, ".scales");
	const struct qf_model_tensor *gi = find(m, prefix, ".g_idx");
	const void *packed[4];
	struct grid gr;
	int64_t bits, ng, j;
	int ret;

	if (!qw || !qz || !sc || !gi || qw->t->ndim != 2 || in <= 0)
		return QF_EFORMAT;
	bits = qw->t->shape[0] * 32 / in;
	ng = sc->t->ndim == 2 ? sc->t->shape[0] : 0;
	if ((bits != 2 && bits != 3 && bits != 4 && bits != 8) ||
	    qw->t->shape[0] * 32 != in * bits ||
	    !qf_gptq_packable((int)bits, in, out) ||
	    !shaped(qw, QF_DT_I32, 2, in * bits / 32, out) ||
	    !shaped(sc, QF_DT_F16, 2, ng, out) || ng < 1 ||
	    !shaped(qz, QF_DT_I32, 2, ng, out * bits / 32) ||
	    !shaped(gi, QF_DT_I32, 1, in, 0)) {
		qf_err("%s: %s: GPTQ tensors have inconsistent shapes", m->dir,
		       prefix);
		return QF_EFORMAT;
	}
	packed[0] = qf_st_data(qw->shard, qw->t);
	packed[1] = qf_st_data(qz->shard, qz->t);
	packed[2] = qf_st_data(sc->shard, sc->t);
	packed[3] = qf_st_data(gi->shard, gi->t);
	ret = grid_alloc(&gr, out, in, ng);
	if (!ret)
		ret = qf_ckpt_unpack_group(QF_CKPT_GPTQ_V1, (int)bits, out, in,
					   ng, 0, packed, gr.q, gr.sc, gr.z,
					   gr.g);
	for (j = 0; j < in && !ret; j++)
		if (gr.g[j] < 0 || gr.g[j] >= ng) {
			qf_err("%s: %s.g_idx out of range", m->dir, prefix);
			ret = QF_EFORMAT;
		}
	if (!ret)
		dequant(gr.q, gr.sc, gr.z, gr.g, out, in, ng, dst);
	if (!ret && (qf_st_faulted(qw->shard) || qf_st_faulted(qz->shard) ||
		     qf_st_faulted(sc->shard) || qf_st_faulted(gi->shard)))
		ret = QF_ECORRUPT;
	grid_free(&gr);
	return ret;
}

static int awq_f32(const struct qf_model *m, const char *prefix, int64_t out,
		   int64_t in, float *dst)
{
	const struct qf_model_tensor *qw = find(m, prefix, ".qweight");
	const struct qf_model_tensor *qz = find(m, prefix, ".qzeros");
	const struct qf_model_tensor *sc = find(m, prefix, ".scales");
	int64_t ng = sc && sc->t->ndim == 2 ? sc->t->shape[0] : 0;
	const struct qf_model_tensor *t[3] = { qw, qz, sc };
	void *copy[3] = { NULL };
	struct grid gr;
	int k, ret;

	if (!qw || !qz || ng < 1 || in % ng || out % 8 ||
	    !shaped(qw, QF_DT_I32, 2, in, out / 8) ||
	    !shaped(qz, QF_DT_I32, 2, ng, out / 8) ||
	    !shaped(sc, QF_DT_F16, 2, ng, out)) {
		qf_err("%s: %s: AWQ tensors have inconsistent shapes", m->dir,
		       prefix);
		return QF_EFORMAT;
	}
	ret = grid_alloc(&gr, out, in, ng);
	/* copies: a shard's tensors need not be aligned */
	for (k = 0; k < 3 && !ret; k++) {
		copy[k] = malloc((size_t)t[k]->t->nbytes);
		if (!copy[k])
			ret = -ENOMEM;
		else
			memcpy(copy[k], qf_st_data(t[k]->shard, t[k]->t),
			       t[k]->t->nbytes);
	}
	if (!ret && (qf_st_faulted(qw->shard) || qf_st_faulted(qz->shard) ||
		     qf_st_faulted(sc->shard)))
		ret = QF_ECORRUPT;
	if (!ret)
		ret = qf_ckpt_unpack_group(QF_CKPT_AWQ_GEMM, 4, out, in, ng,
					   in / ng, (const void *const *)copy,
					   gr.q, gr.sc, gr.z, gr.g);
	if (!ret)
		dequant(gr.q, gr.sc, gr.z, gr.g, out, in, ng, dst);
	for (k = 0; k < 3; k++)
		free(copy[k]);
	grid_free(&gr);
	return ret;
}

int qf_model_linear_f32(const struct qf_model *m, const char *prefix,
			int64_t out, int64_t in, float *dst)
{
	const struct qf_model_tensor *w = find(m, prefix, ".weight");

	if (w) {
		if (w->t->ndim != 2 || w->t->shape[0] != out ||
		    w->t->shape[1] != in) {
			qf_err("%s: %s.weight has the wrong shape", m->dir,
			       prefix);
			return QF_EFORMAT;
		}
		return qf_model_read_f32(w, dst);
	}
	if (find(m, prefix, ".qweight"))
		return find(m, prefix, ".g_idx") ?
		       gptq_f32(m, prefix, out, in, dst) :
		       awq_f32(m, prefix, out, in, dst);
	qf_err("%s: no tensor %s.weight", m->dir, prefix);
	return QF_EFORMAT;
}
