/*
 * dequant.c - read a linear's weight as fp32 whatever form the checkpoint
 * stores it in: a plain "<p>.weight" (F32/F16/BF16), or the GPTQ
 * checkpoint tensors "<p>.qweight/.qzeros/.scales/.g_idx" that quantfs
 * serves, or the AutoAWQ GEMM tensors "<p>.qweight/.qzeros/.scales" (no
 * g_idx), so `quantfs eval` and the forward pass run on a mounted
 * variant directly.  The GPTQ "gptq" (v1) format stores zero - 1.
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

static int gptq_f32(const struct qf_model *m, const char *prefix, int64_t out,
		    int64_t in, float *dst)
{
	const struct qf_model_tensor *qw = find(m, prefix, ".qweight");
	const struct qf_model_tensor *qz = find(m, prefix, ".qzeros");
	const struct qf_model_tensor *sc = find(m, prefix, ".scales");
	const struct qf_model_tensor *gi = find(m, prefix, ".g_idx");
	const uint32_t *zw;
	const uint16_t *s;
	const int32_t *g;
	int64_t bits, ng, r, j;
	uint8_t *q = NULL, *z = NULL;
	int32_t mask;
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
	mask = (1 << bits) - 1;
	q = malloc((size_t)(out * in));
	z = malloc((size_t)(ng * out));
	if (!q || !z) {
		ret = -ENOMEM;
		goto out_free;
	}
	qf_gptq_unpack_qweight(qf_st_data(qw->shard, qw->t), out, in,
			       (int)bits, q);
	/* a qzeros row is one contiguous little-endian stream of zero - 1 */
	zw = qf_st_data(qz->shard, qz->t);
	for (j = 0; j < ng; j++)
		qf_gptq_unpack_qweight(zw + j * (out * bits / 32), 1, out,
				       (int)bits, z + j * out);
	s = qf_st_data(sc->shard, sc->t);
	g = qf_st_data(gi->shard, gi->t);
	for (j = 0; j < in; j++)
		if (g[j] < 0 || g[j] >= ng) {
			qf_err("%s: %s.g_idx out of range", m->dir, prefix);
			ret = QF_EFORMAT;
			goto out_free;
		}
	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			int64_t k = (int64_t)g[j] * out + r;
			int32_t zero = (z[k] + 1) & mask;

			dst[r * in + j] = qf_f16_to_f32(s[k]) *
					  (float)((int32_t)q[r * in + j] - zero);
		}
	ret = qf_st_faulted(qw->shard) || qf_st_faulted(qz->shard) ||
	      qf_st_faulted(sc->shard) || qf_st_faulted(gi->shard) ?
	      QF_ECORRUPT : 0;
out_free:
	free(q);
	free(z);
	return ret;
}

static int awq_f32(const struct qf_model *m, const char *prefix, int64_t out,
		   int64_t in, float *dst)
{
	const struct qf_model_tensor *qw = find(m, prefix, ".qweight");
	const struct qf_model_tensor *qz = find(m, prefix, ".qzeros");
	const struct qf_model_tensor *sc = find(m, prefix, ".scales");
	int64_t ng = sc && sc->t->ndim == 2 ? sc->t->shape[0] : 0, r, j, gs;
	uint32_t *w = NULL, *z = NULL;
	uint16_t *s = NULL, *s16 = NULL;
	uint8_t *q = NULL;
	int32_t *zero = NULL;
	int ret = -ENOMEM;

	if (!qw || !qz || ng < 1 || in % ng || out % 8 ||
	    !shaped(qw, QF_DT_I32, 2, in, out / 8) ||
	    !shaped(qz, QF_DT_I32, 2, ng, out / 8) ||
	    !shaped(sc, QF_DT_F16, 2, ng, out)) {
		qf_err("%s: %s: AWQ tensors have inconsistent shapes", m->dir,
		       prefix);
		return QF_EFORMAT;
	}
	gs = in / ng;
	/* copies: a shard's tensors need not be aligned */
	w = malloc((size_t)qw->t->nbytes);
	z = malloc((size_t)qz->t->nbytes);
	s = malloc((size_t)sc->t->nbytes);
	q = malloc((size_t)(out * in));
	s16 = malloc((size_t)(out * ng) * sizeof(*s16));
	zero = malloc((size_t)(out * ng) * sizeof(*zero));
	if (!w || !z || !s || !q || !s16 || !zero)
		goto out_free;
	memcpy(w, qf_st_data(qw->shard, qw->t), qw->t->nbytes);
	memcpy(z, qf_st_data(qz->shard, qz->t), qz->t->nbytes);
	memcpy(s, qf_st_data(sc->shard, sc->t), sc->t->nbytes);
	if (qf_st_faulted(qw->shard) || qf_st_faulted(qz->shard) ||
	    qf_st_faulted(sc->shard)) {
		ret = QF_ECORRUPT;
		goto out_free;
	}
	qf_awq_unpack(w, z, s, out, in, ng, q, s16, zero);
	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++) {
			int64_t k = r * ng + j / gs;

			dst[r * in + j] = qf_f16_to_f32(s16[k]) *
				(float)((int32_t)q[r * in + j] - zero[k]);
		}
	ret = 0;
out_free:
	free(w);
	free(z);
	free(s);
	free(q);
	free(s16);
	free(zero);
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
