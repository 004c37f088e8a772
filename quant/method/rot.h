/*
 * rot.h - incoherence processing (rot.c): a model rewritten, weight-only,
 * into one of the same architecture that computes the same function but
 * whose linears have no outlier channels, so 2- and 3-bit grids fit them
 * far better (QuaRot / SpinQuant without online rotations).  The `_rot`
 * flag of the calibrated methods quantizes this model instead of the
 * source (quantfs-variants(7), ROTATIONS).
 */
#ifndef QF_ROT_H
#define QF_ROT_H

#include <stdint.h>

#include "io.h"

/* The seed every `_rot` variant uses (recorded in quantization.json). */
#define QF_ROT_SEED 0x5eedULL
/* The construction, as quantization.json names it. */
#define QF_ROT_NAME "randomized-hadamard-kron-dct-v1"

/*
 * The orthogonal n x n matrix of seed, row-major, into q:
 * Q = diag(s) (H_p / sqrt(p) kron C_m) where n = p m, p the largest power
 * of two dividing n, H_p Sylvester's Hadamard matrix (H[a][b] =
 * (-1)^popcount(a & b)), C_m the orthonormal DCT-II matrix (C[k][j] =
 * a_k cos(pi (2j + 1) k / 2m), a_0 = sqrt(1/m), else sqrt(2/m); C_1 = 1),
 * index i = a m + b; s_i = -1 when the top bit of the i-th output of
 * splitmix64 started at seed is set, else +1.
 */
void qf_rot_matrix(int n, uint64_t seed, float *q);

/*
 * Write the rotated model of m into directory dir (which must exist):
 * config.json (tie_word_embeddings false when a tied head has to differ
 * from the embedding), model.safetensors in m's dtype, the tokenizer
 * files.  With Q = qf_rot_matrix(hidden, seed), R = qf_rot_matrix(
 * head_dim, seed + 1): every RMSNorm's scale is folded into the linears
 * that read it and the norm set to 1 (0 for (1 + w) norms); the
 * embedding becomes E Q, readers of the residual (q/k/v, gate/up,
 * lm_head) W Q, writers (o_proj, down_proj) Q^T W; each kv head's
 * v_proj rows (and bias) R^T V, each query head's o_proj column block
 * O R.  Returns 0, QF_EUNSUPPORTED (an architecture whose norms cannot
 * be folded: sandwich norms, MoE blocks, fused or unknown tensors;
 * logged), -errno, -ENOMEM, or a read error.
 */
int qf_rot_write(const struct qf_model *m, uint64_t seed, const char *dir);

#endif /* QF_ROT_H */
