/*
 * brecq_fixture.h - what test_brecq and test_brecq_grad share: a seeded
 * generator, allocations that cannot fail, and random decoder layers of
 * four architectures' options (llama, q/k/v bias, q/k norm, Gemma 3).
 */
#ifndef QF_BRECQ_FIXTURE_H
#define QF_BRECQ_FIXTURE_H

#include <stdint.h>

#include "tf_kernels.h"

enum variant { VAR_LLAMA, VAR_BIAS, VAR_QKNORM, VAR_GEMMA };
extern const char *const var_name[];

double drand(void);		/* uniform [-1, 1), one seeded sequence */
/* p[i] = offset + scale * drand() */
void fill(float *p, int64_t n, double scale, double offset);
float *falloc(int64_t n);	/* malloc or assert */
double *dalloc(int64_t n);
double now_s(void);
double dot_f(const float *a, const float *b, int64_t n);	/* in double */		/* CLOCK_MONOTONIC seconds */
void make_config(struct qf_tf_config *c, int hidden, int heads,
		 int kv_heads, int hd, int inter, enum variant var);
/* Linear l's [out, in]. */
void lin_dims(const struct qf_tf_config *c, int l, int64_t *out,
	      int64_t *in);
/* Random weights ~ U(-a, a) with variance about 1 / in (q/k larger so
 * that the attention is far from uniform). */
void make_layer(const struct qf_tf_config *c, struct qf_tf_layer *ly);
void copy_layer(const struct qf_tf_config *c, const struct qf_tf_layer *src,
		struct qf_tf_layer *dst);

#endif /* QF_BRECQ_FIXTURE_H */
