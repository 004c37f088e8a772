/*
 * mixed_alloc.h - the precisions of a measured mixed-precision variant
 * (mixed_dyn, mixed_b<avg>) from its sensitivity tables: linears grouped
 * into units that share an option (width and group size), monotone
 * costs per unit, then the bit-budget knapsack or the importance ratios
 * (mixed.h).
 *
 * Pure: the tables come in as arrays (fs/job_mixed.c measures and caches
 * them), the allocation goes out as names, widths, group sizes and the
 * JSON that quantization.json shows.  The widths are the GPTQ
 * containers', the variant's job quantizes with GPTQ at them.
 */
#ifndef QF_MIXED_ALLOC_H
#define QF_MIXED_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "mixed.h"
#include "method.h"

/*
 * Candidate options: a GPTQ width and group size, or 16 (kept).  A
 * 6-bit grid costs the 8-bit container's bytes with more error
 * (dominated), so 6 is not one; groups of 32 cost 0.56 more bits per
 * weight than 128 at 4 bits (a 16-bit scale and a 4-bit zero per 32
 * weights against 128), often a better trade than a wider grid.
 */
struct qf_mixed_opt {
	int bits;			/* 2, 3, 4, 8, or 16: kept */
	int group;			/* 32 or 128; 0 with 16 */
};
#define QF_MIXED_NW 8
extern const struct qf_mixed_opt qf_mixed_opts[QF_MIXED_NW];
/* 2/128 2/32 3/128 3/32 4/128 4/32 8/128 16 */
#define QF_MIXED_REF 2			/* 3 bits, group 128: the KL trial */
#define QF_MIXED_GROUP 128		/* the KL trial's and ratios' group */
/*
 * A linear's sensitivity record: its relative output error with GPTQ at
 * each option, round to nearest's at QF_MIXED_REF (what the KL trial
 * rounds with), then the act and weight signals (qf_mixed_signals).
 */
#define QF_MIXED_SENS_RTN QF_MIXED_NW
#define QF_MIXED_SENS_REC (QF_MIXED_NW + 3)
#define QF_MIXED_UNITS 4		/* units per decoder layer */

/*
 * Units share a precision: q/k/v and gate/up are fused by loaders
 * (vLLM needs one precision per fused shard set), o and down alone.
 * 0 {q,k,v}, 1 {o}, 2 {gate,up}, 3 {down} (and anything past down).
 */
int qf_mixed_unit_of(enum qf_tf_linear k);

/* One quantizable linear of the model. */
struct qf_mixed_linear {
	const char *name;		/* its weight tensor */
	int layer;			/* decoder layer */
	enum qf_tf_linear kind;		/* QF_TF_NLINEAR: none (unit 3) */
	int64_t out, in;		/* its shape */
	uint64_t params;		/* out * in */
	uint64_t src_bytes;		/* bytes of the source tensor */
};

struct qf_mixed_alloc_in {
	const struct qf_mixed_linear *lin;	/* [n] */
	size_t n;
	int nlayers;
	const double *sens;	/* [n][QF_MIXED_SENS_REC] */
	const double *uloss;	/* [nlayers * 4][QF_MIXED_NW]: the cost
				 * of the unit at each option (from the
				 * KL with only it rounded, job_mixed.c) */
	bool budget;		/* mixed_b<avg>: a budget, else ratios */
	int avg_bits_x100;	/* the budget */
	const struct qf_mixed_ratio *ratio;
	const char *calib_key;	/* the set measured on, for the JSON */
	const char *model;	/* names for the log */
	const char *variant;
};

/* The allocation of a variant. */
struct qf_mixed_alloc {
	size_t n;
	char **names;			/* linear weights */
	int *bits;			/* their grids, 16 = kept */
	int *group;			/* their group sizes, 0: kept */
	char *json;			/* quantization.json "allocation" */
	uint8_t calib_vid[16];		/* the set it was measured on (the
					 * caller's, QF_CACHE_VID bytes) */
};

/*
 * Allocate widths to in's linears by its policy.  *out (set also on
 * failure, then NULL) is freed with qf_mixed_alloc_free; calib_vid is
 * left zero.  Returns 0, QF_ESPEC (no allocation fits the budget; a
 * line says what the narrowest widths need), -EINVAL, -ENOMEM.
 */
int qf_mixed_alloc_run(const struct qf_mixed_alloc_in *in,
		       struct qf_mixed_alloc **out);
/* qf_bits_fn over an allocation: a linear not in it stays 16. */
int qf_mixed_alloc_bits(void *arg, const char *name, int *group);
void qf_mixed_alloc_free(struct qf_mixed_alloc *a);

#endif
