/*
 * gguf_kq.c - what a k-quant view (kq4_k_m, kq6_k) and its calibration
 * job agree on: the view's types, where each tensor's importance sits in
 * the job's per-layer record, and which tensors the job encodes itself.
 *
 * GPTQ on llama.cpp's k-quant grids (quant/gguf/ggml_gptq.c) needs the
 * Hessian of each linear's input.  The job has it in memory; it used to
 * store GPTQ's factor of it for the view to run the sweep when model.gguf
 * was read: 4 in^2 bytes per distinct input, 60 MB a layer at Qwen3-0.6B's
 * shapes and 0.7 GB at 7B, dead once the view was cached (issue #24).  The
 * job now runs the sweep itself, with the view's own plan, and stores the
 * encoded tensors (0.56 byte a weight for Q4_K, 0.82 for Q6_K), which the
 * view copies.  This file is the job's side too (gguf_view.c calls var.c,
 * which starts the job: the job may not call it back).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_i.h"
#include "gguf.h"

enum qf_ggml_type qf_kq_types(const struct qf_spec *s,
			      struct qf_gguf_types *ty)
{
	enum qf_ggml_type q = s->bits == 6 ? QF_GGML_Q6_K : QF_GGML_Q4_K;

	qf_gguf_types_uniform(ty, q);
	ty->q4_k_m = q == QF_GGML_Q4_K;
	return q;
}

int qf_kq_plan(const struct qf_var *var, struct qf_gguf_plan *p)
{
	struct qf_gguf_types ty;
	const char *why = NULL;
	int ret;

	qf_kq_types(&var->v->spec, &ty);
	ret = qf_gguf_plan_init(var->v->m, &ty, p, &why);
	if (ret < 0)
		qf_err("%s/%s: no model.gguf plan for the k-quant encoder: %s",
		       var->mdl->name, var->v->name,
		       why ? why : qf_strerror(ret));
	return ret;
}

bool qf_kq_tensor_off(const struct qf_tf_config *c,
		      const struct qf_gguf_tensor *t, int *l, size_t *off,
		      int *lin)
{
	char want[160];
	int64_t r0, rows, e;
	int k;

	*lin = -1;		/* an expert's: no GPTQ factor */
	if (!t->src || sscanf(t->src->name, "model.layers.%d.", l) != 1)
		return false;
	for (k = 0; k < QF_TF_NLINEAR && t->ndim < 3; k++) {
		/* a fused tensor: its first linear's inputs, which it reads */
		snprintf(want, sizeof(want), "model.layers.%d.%s.weight", *l,
			 qf_tf_linear_tensor(c, k, &r0, &rows));
		if (!strcmp(want, t->src->name)) {
			off[0] = qf_kq_imatrix_off(c, k);
			*lin = k;
			return true;
		}
	}
	for (k = 0; c->moe && k < QF_MOE_NLINEAR; k++) {
		/* an expert's: the 3-D tensor's first, or the shared one */
		e = t->ndim < 3 ? c->experts : 0;
		qf_moe_expert_name(c, *l, (int)e, k, want, sizeof(want) - 8);
		strcat(want, ".weight");
		if (strcmp(want, t->src->name))
			continue;
		for (; e < (t->ndim < 3 ? c->experts + 1 : t->ne[2]); e++)
			off[t->ndim < 3 ? 0 : e] =
				qf_kq_imatrix_exp_off(c, (int)e, k);
		return true;
	}
	return false;
}


bool qf_kq_job_tensor(const struct qf_gguf_plan *p,
		      const struct qf_gguf_tensor *t, int *l, int *lin,
		      size_t *off)
{
	if (t->ndim != 2)
		return false;
	if (!strcmp(t->name, "output.weight")) {
		*l = p->cfg.layers - 1;
		*lin = QF_TF_NLINEAR;
		*off = 0;
		return true;
	}
	return qf_kq_tensor_off(&p->cfg, t, l, off, lin) && *lin >= 0;
}

void qf_kq_item_name(const struct qf_gguf_tensor *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "__kqe__.%d.%s", (int)t->type, t->name);
}

bool qf_kq_head(const struct qf_gguf_plan *p)
{
	size_t i;

	for (i = 0; i < p->nt; i++)
		if (!strcmp(p->t[i].name, "output.weight"))
			return true;
	return false;
}

/* One tensor's encoding, in a thread of its own. */
struct enc {
	const struct qf_model *m;
	const struct qf_gguf_plan *p;
	size_t i;
	const float *imp, *u;
	void *dst;
	int ret;
	pthread_t th;
	bool thread;
};

static void *enc_main(void *arg)
{
	struct enc *e = arg;

	/* the plain encoder where u is NULL or the type has no GPTQ: the
	 * bytes the view would make */
	e->ret = qf_gguf_produce_gptq(e->m, e->p, e->i, e->imp, e->u, e->dst);
	return NULL;
}

int qf_kq_encode(const struct qf_model *m, const struct qf_gguf_plan *p,
		 int l, const float *imat, float *const *u,
		 char (*name)[QF_KQ_NAME], void **buf,
		 struct qf_cache_item *items, size_t *n)
{
	struct enc e[QF_TF_NLINEAR + 1];
	size_t i, off;
	int k, ne = 0, tl, lin, ret = 0;

	for (i = 0; i < p->nt && !ret; i++) {
		const struct qf_gguf_tensor *t = &p->t[i];

		if (!qf_kq_job_tensor(p, t, &tl, &lin, &off) || tl != l)
			continue;
		if (ne > QF_TF_NLINEAR)
			return QF_ECORRUPT;	/* more than a layer has */
		free(buf[ne]);
		if (!(buf[ne] = malloc(t->nbytes ? t->nbytes : 1)))
			return -ENOMEM;
		qf_kq_item_name(t, name[ne], QF_KQ_NAME);
		e[ne] = (struct enc){ .m = m, .p = p, .i = i, .dst = buf[ne],
			.imp = lin < QF_TF_NLINEAR ? imat + off : NULL,
			.u = u[lin < QF_TF_NLINEAR ? qf_kq_u_owner(lin) :
			       QF_TF_NLINEAR] };
		items[(*n)++] = (struct qf_cache_item){ name[ne], buf[ne],
							t->nbytes };
		ne++;
	}
	/* the tensors are independent: all at once (the same bytes) */
	for (k = 0; k < ne; k++)
		e[k].thread = pthread_create(&e[k].th, NULL, enc_main,
					     &e[k]) == 0;
	for (k = 0; k < ne; k++) {
		if (e[k].thread)
			pthread_join(e[k].th, NULL);
		else
			enc_main(&e[k]);
		if (!ret)
			ret = e[k].ret;
	}
	return ret;
}
