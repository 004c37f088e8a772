/*
 * job_i.h - the production job of a calibrated variant, shared by its
 * files: job.c (scheduling: start, wait, finish), job_calib.c (the
 * calibration set and the job's setup), job_layer.c (the calibration
 * driver's per-layer callbacks: method, cache commit, replay) and
 * job_mixed.c (mixed precision's sensitivity tables).  Calls go one
 * way: job.c into job_layer.c and job_calib.c, job_layer.c and
 * job_mixed.c into job_calib.c, which calls none of them.
 */
#ifndef QF_JOB_I_H
#define QF_JOB_I_H

#include "fs_i.h"
#include "layer.h"

/*
 * A calibrated variant's layer job, var->job (opaque outside the job
 * files): its layer map, progress and results.  The fields marked lock
 * are protected by var->lock; waiters wait on var->cond.  Across
 * processes a job holds byte QF_LOCK_JOB of the variant's lock file and
 * reads and records through the variant's single flight (flight.c);
 * readers wait for its progress, not for a slot, so a job is not a slot.
 */
struct qf_job {
	char *calib_path;		/* text set, NULL = sampled */
	int nlayers;
	int32_t *lin_group;		/* [nlayers * QF_TF_NLINEAR], -1; a
					 * fused tensor's group at its first
					 * linear only */
	int32_t *group_layer;		/* [ng] */
	int nexp;			/* MoE: experts per layer, else 0 */
	int32_t *exp_group;		/* [nlayers * nexp * QF_MOE_NLINEAR]:
					 * group of expert e's linear k of
					 * layer l, -1 (kept or dense) */
	double *res_tokens;		/* [ng]: MoE experts' routed tokens */
	int layers_done;		/* lock */
	bool running;			/* lock */
	unsigned gen;			/* lock */
	int err;			/* lock: result of the last job */
	double t0;			/* lock: when the running job began */
	double first_t;			/* lock: when its first layer began */
	int first;			/* lock: first layer it computes */
	const char *phase;		/* lock: what the job does now */
	double *res_loss;		/* [ng] results, set before ready */
	double *res_rtn;		/* [ng] */
	double *res_alpha;		/* [ng] awq */
	double *res_score;		/* [ng * 2] awq reflip */
	double res_seconds;
	char res_hash[65];		/* token hash of the set used */
	/* another machine produces it (cluster.c), lock */
	char remote_holder[128];	/* "host pid N", "" none */
	int remote_done;		/* its layers done, -1 unknown */
	int remote_total;
	double remote_eta;		/* seconds, -1 unknown */
};

/* One running job (or a measurement's stand-in); owned by its thread. */
struct job {
	struct qf_fs *fs;
	struct qf_var *var;
	struct qf_tf_config c;
	int first;			/* layers before it are replayed */
	double t0;
	struct qf_layer_res res;	/* the layer's tensors and losses,
					 * [var->v->ng] */
	float *imat;			/* kq: this layer's importance matrix */
	float *kq_u[QF_TF_NLINEAR + 1];	/* kq: this layer's GPTQ factors
					 * (qf_kq_u_owner's linears; the
					 * head's last, the last layer's) */
	struct qf_gguf_plan *kq_plan;	/* kq: the view's, for the encoder
					 * (qf_kq_encode), or NULL */
	void *kq_enc[QF_KQ_ITEMS];	/* kq: this layer's encoded
					 * tensors, their names */
	char kq_name[QF_KQ_ITEMS][QF_KQ_NAME];
	float *kq_awq[4];		/* kq _awq: this layer's scales of
					 * q/k/v's, o's, gate/up's, down's
					 * inputs, or NULL (not scaled) */
	double kq_alpha[4];		/* kq _awq: their exponents (log) */
	int layer;			/* brecq: the block being rebuilt */
	double *sens;			/* mixed: [ng][QF_MIXED_SENS_REC] */
	double *energy;			/* mixed: [ng] tr(W H W^T) */
	double *tokens;			/* MoE: [ng] tokens routed to the
					 * expert of each expert group */
	/* where the time goes (logged at the end of the job; GPTQ's own
	 * and the comparison's are in res) */
	struct qf_cjob *cl;		/* the remote tier's side, or NULL */
	double stats_s;			/* X^T X and channel sums */
	double commit_s;		/* LMDB transactions */
	double calib_s;			/* the calibration set's token ids */
	double kq_s;			/* kq: GPTQ factors, the head's
					 * Hessian */
	double kq_enc_s;		/* kq: GPTQ on the k-quant grids */
};

/*
 * "__layer__.N" records: per linear of the layer, REC doubles: loss,
 * loss_rtn, alpha, score error before / after (-1 where not applicable).
 * Records of two doubles per linear (GPTQ before AWQ existed) still read.
 */
#define REC 5
#define REC_OLD 2

/*
 * "__experts__.N" records of a MoE layer: per expert e and linear k (at
 * e * QF_MOE_NLINEAR + k), EXP_REC doubles: loss, loss_rtn, the tokens
 * routed to e (-1 for linears kept), AWQ's scale exponent (-1: none; a
 * record of EXP_REC_OLD leaves it out).
 */
#define EXP_REC 4
#define EXP_REC_OLD 3
/* Expert e's linear k of layer l: its group, or -1. */
static inline int32_t qf_job_exp_group(const struct qf_job *jb, int l, int e,
				       int k)
{
	return jb->nexp ? jb->exp_group[((size_t)l * (size_t)jb->nexp +
					 (size_t)e) * QF_MOE_NLINEAR +
					(size_t)k] : -1;
}

/* job_calib.c */
/* What the job does now, for the progress attribute (takes var->lock). */
void qf_job_phase(struct qf_var *var, const char *phase);
/* The calibration set of j->var into *cs: from the cache, else sampled
 * or read from the text and cached.  0 or an error (cs then empty). */
int qf_job_calib_set(struct job *j, struct qf_calib *cs);

/* job_layer.c */
/* Layer l of var is in the cache (its groups, or its imatrix). */
bool qf_job_layer_complete(struct qf_fs *fs, struct qf_var *var, int l);
/* How many layers from the first on are in the cache. */
int qf_job_layers_cached(struct qf_fs *fs, struct qf_var *var);
/* The driver's callbacks for var's method (arg: the struct job). */
void qf_job_layer_ops(const struct qf_spec *sp, struct qf_calib_ops *ops);
/* kq: frees the layer's GPTQ factors, encoded tensors and AWQ scales
 * (job->kq_u, kq_enc, kq_awq). */
void qf_job_kq_free(struct job *j);

#endif
