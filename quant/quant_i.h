/*
 * quant_i.h - helpers shared inside quant/ only.
 */
#ifndef QF_QUANT_I_H
#define QF_QUANT_I_H

#include <stddef.h>
#include <stdint.h>

/* Length of the strict UTF-8 sequence at s[0..n), 0 when invalid. */
size_t qf_utf8_seq(const uint8_t *s, size_t n);

struct qf_model;
struct qf_tf_config;
/*
 * log p(target[r]) under the final norm + lm_head of each row of x
 * [n, hidden], 0 where target[r] is -1 (eval.c; perplexity and multiple
 * choice share it).  Returns 0, -ENOMEM, or qf_tf_head's error.
 */
int qf_head_logp(const struct qf_model *m, const struct qf_tf_config *c,
		 const float *x, const int32_t *target, int64_t n,
		 double *logp);

#endif /* QF_QUANT_I_H */
