/*
 * gguf_kq.c - what a k-quant view (kq2_k .. kq6_k) and its calibration
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
 * view copies.  A layer's tensors are encoded split by rows over every
 * online CPU (rows are encoded independently: the bytes do not depend on
 * the split; the sweep's plain loops take about 110 s of one core for a
 * 7B model's 4096 x 14336 down projection).  This file is the job's side
 * too (gguf_view.c calls var.c, which starts the job: the job may not
 * call it back).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_i.h"
#include "gguf.h"

enum qf_ggml_type qf_kq_types(const struct qf_spec *s,
			      struct qf_gguf_types *ty)
{
	enum qf_gguf_mix mix;
	enum qf_ggml_type q;

	if (qf_gguf_mix_of(s->bits, s->kq_size, &mix, &q) < 0)
		return QF_GGML_F32;	/* (the spec refuses those first) */
	qf_gguf_types_uniform(ty, q);
	ty->mix = mix;
	ty->fold = s->flags & QF_SPEC_AWQ;
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


/* A norm that feeds a group AWQ scales: attn_norm (q/k/v), ffn_norm. */
static bool fold_norm(const struct qf_gguf_tensor *t, int *l, int *lin)
{
	char rest[32];

	if (t->ndim != 1 || sscanf(t->name, "blk.%d.%31s", l, rest) != 2)
		return false;
	*lin = !strcmp(rest, "attn_norm.weight") ? QF_TF_Q :
	       !strcmp(rest, "ffn_norm.weight") ? QF_TF_GATE : -1;
	return *lin >= 0;
}

bool qf_kq_job_tensor(const struct qf_gguf_plan *p,
		      const struct qf_gguf_tensor *t, int *l, int *lin,
		      size_t *off)
{
	*off = 0;
	if (p->fold && fold_norm(t, l, lin))
		return true;
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

/* One piece of a layer's encoding: rows [r0, r1) of tensor i. */
struct task {
	size_t i;
	int64_t r0, r1;
	const float *imp, *u;
	const struct qf_gguf_fold *fold;
	void *dst;
	double cost;			/* rows x in^2: the sweep's work */
};

/* The layer's pieces, taken in turn by every thread. */
struct work {
	const struct qf_model *m;
	const struct qf_gguf_plan *p;
	struct task *task;
	int ntask, next;		/* lock */
	int ret;			/* lock: the first error */
	pthread_mutex_t lock;
};

static void *worker(void *arg)
{
	struct work *w = arg;
	const struct task *t;
	int k, ret;

	for (;;) {
		pthread_mutex_lock(&w->lock);
		k = w->ret ? w->ntask : w->next++;
		pthread_mutex_unlock(&w->lock);
		if (k >= w->ntask)
			return NULL;
		/* the plain encoder where u is NULL or the type has no
		 * GPTQ: the bytes the view would make */
		t = &w->task[k];
		ret = qf_gguf_produce_gptq(w->m, w->p, t->i, t->r0, t->r1,
					   t->imp, t->u, t->fold, t->dst);
		pthread_mutex_lock(&w->lock);
		if (ret && !w->ret)
			w->ret = ret;
		pthread_mutex_unlock(&w->lock);
	}
}

static int by_cost(const void *a, const void *b)
{
	const struct task *x = a, *y = b;

	return (x->cost < y->cost) - (x->cost > y->cost);
}

/*
 * Tensor i's rows in pieces for nth threads (whole heads where its rows
 * are permuted), appended to w->task.
 */
static void split(struct work *w, size_t i, const float *imp,
		  const float *u, const struct qf_gguf_fold *fold, void *dst,
		  int nth)
{
	const struct qf_gguf_tensor *t = &w->p->t[i];
	int64_t rows = t->ne[1], hd = 1, step, r;

	if (t->ndim == 1) {	/* a norm: whole */
		w->task[w->ntask++] = (struct task){ i, 0, 0, NULL, NULL,
						     fold, dst, 0 };
		return;
	}
	if (t->permute_heads)
		hd = rows / t->permute_heads;
	step = (rows + nth - 1) / nth;
	step = (step + hd - 1) / hd * hd;
	for (r = 0; r < rows; r += step)
		w->task[w->ntask++] = (struct task){ i, r, r + step < rows ?
			r + step : rows, imp, u, fold, dst,
			(double)(r + step < rows ? step : rows - r) *
			(double)t->ne[0] * (double)t->ne[0] };
}

/* The pieces in the calling thread and nth - 1 more, largest first. */
static int run(struct work *w, int nth)
{
	pthread_t th[64];
	int k, n = 0;

	qsort(w->task, (size_t)w->ntask, sizeof(*w->task), by_cost);
	pthread_mutex_init(&w->lock, NULL);
	for (k = 1; k < nth && k < w->ntask && n < 64; k++)
		if (pthread_create(&th[n], NULL, worker, w) == 0)
			n++;
	worker(w);
	for (k = 0; k < n; k++)
		pthread_join(th[k], NULL);
	pthread_mutex_destroy(&w->lock);
	return w->ret;
}

int qf_kq_scale_group(enum qf_tf_linear k)
{
	return k <= QF_TF_V ? 0 : k == QF_TF_O ? 1 : k == QF_TF_DOWN ? 3 : 2;
}

/*
 * Tensor t's fold (of linear lin, or the norm before it) from layer l's
 * scales s: its columns times its input's, its rows divided by those
 * folded out of v (o's scales) and up (down's); *row is allocated where
 * a tensor's rows need it (the caller frees).
 */
static int fold_of(const struct qf_tf_config *c,
		   const struct qf_gguf_tensor *t, int l, int lin,
		   float *const *s, struct qf_gguf_fold *f, float **row)
{
	char want[160];
	int64_t r0, rows, r;
	int k;

	*f = (struct qf_gguf_fold){ NULL, NULL };
	*row = NULL;
	if (!s || lin < 0 || lin >= QF_TF_NLINEAR)
		return 0;
	if (t->ndim == 1) {	/* a norm: its group's input scales */
		f->row = s[qf_kq_scale_group((enum qf_tf_linear)lin)];
		return 0;
	}
	f->col = s[qf_kq_scale_group((enum qf_tf_linear)lin)];
	for (k = 0; k < 2; k++) {	/* v's rows take o's, up's down's */
		enum qf_tf_linear kl = k ? QF_TF_UP : QF_TF_V;
		const float *sk = s[qf_kq_scale_group(k ? QF_TF_DOWN :
							  QF_TF_O)];

		snprintf(want, sizeof(want), "model.layers.%d.%s.weight", l,
			 qf_tf_linear_tensor(c, kl, &r0, &rows));
		if (!sk || strcmp(want, t->src->name))
			continue;
		if (!*row) {
			if (!(*row = malloc((size_t)t->ne[1] * sizeof(float))))
				return -ENOMEM;
			for (r = 0; r < t->ne[1]; r++)
				(*row)[r] = 1;
		}
		f->row = *row;
		for (r = 0; r < rows && r0 + r < t->ne[1]; r++)
			(*row)[r0 + r] = sk[r];
	}
	return 0;
}

int qf_kq_encode(const struct qf_model *m, const struct qf_gguf_plan *p,
		 int l, const float *imat, float *const *u,
		 float *const *s, char (*name)[QF_KQ_NAME], void **buf,
		 struct qf_cache_item *items, size_t *n)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int nth = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
	struct work w = { .m = m, .p = p };
	struct qf_gguf_fold fold[QF_KQ_ITEMS];
	float *row[QF_KQ_ITEMS] = { NULL };
	size_t i, off;
	int ne = 0, tl, lin, k, ret = 0;

	w.task = malloc((size_t)QF_KQ_ITEMS * (size_t)nth * sizeof(*w.task));
	if (!w.task)
		return -ENOMEM;
	for (i = 0; i < p->nt && !ret; i++) {
		const struct qf_gguf_tensor *t = &p->t[i];

		if (!qf_kq_job_tensor(p, t, &tl, &lin, &off) || tl != l)
			continue;
		if (ne >= QF_KQ_ITEMS) {
			ret = QF_ECORRUPT;	/* more than a layer has */
			break;
		}
		free(buf[ne]);
		if (!(buf[ne] = malloc(t->nbytes ? t->nbytes : 1))) {
			ret = -ENOMEM;
			break;
		}
		ret = fold_of(&p->cfg, t, l, lin, p->fold ? s : NULL,
			      &fold[ne], &row[ne]);
		qf_kq_item_name(t, name[ne], QF_KQ_NAME);
		split(&w, i, lin < QF_TF_NLINEAR && t->ndim == 2 ?
		      imat + off : NULL,
		      t->ndim == 1 ? NULL : u[lin < QF_TF_NLINEAR ?
		      qf_kq_u_owner(lin) : QF_TF_NLINEAR], &fold[ne], buf[ne],
		      nth);
		items[(*n)++] = (struct qf_cache_item){ name[ne], buf[ne],
							t->nbytes };
		ne++;
	}
	/* rows are encoded independently: the same bytes in any split */
	if (!ret)
		ret = run(&w, nth);
	for (k = 0; k < ne; k++)
		free(row[k]);
	free(w.task);
	return ret;
}
